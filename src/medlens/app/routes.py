"""The REST API's routes under ``/api/v1``: models and their plots, analyse, history. Typed bodies live in
:mod:`medlens.app.schemas`; errors become JSON by type in :mod:`medlens.app.handlers`."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, File, Form, HTTPException, Query, Request, UploadFile
from fastapi.responses import FileResponse
from starlette.concurrency import run_in_threadpool

from medlens.app import schemas, security
from medlens.app.service import AnalysisService
from medlens.pipelines.config import DEFAULT_TTA

API_PREFIX = "/api/v1"
PictureKind = Literal["image", "mask", "overlay", "gradcam", "thumbnail"]
PNG = {200: {"content": {"image/png": {}}, "description": "PNG"}}


def base_url(request: Request) -> str:
    """``/api/v1`` behind the proxy's root_path, for the picture links in a response."""
    return f"{request.scope.get('root_path', '').rstrip('/')}{API_PREFIX}"


def api_router(service: AnalysisService, upload_limit: int, max_pixels: int, token: str | None) -> APIRouter:
    """All ``/api/v1`` routes; with ``token`` each needs ``Authorization: Bearer <token>``."""
    router = APIRouter(
        prefix=API_PREFIX,
        dependencies=[Depends(security.bearer_dependency(token))],
        responses=schemas.AUTH_RESPONSES,
    )
    _model_routes(router, service)
    _analyze_route(router, service, upload_limit, max_pixels)
    _history_routes(router, service)
    return router


def _model_routes(router: APIRouter, service: AnalysisService) -> None:
    @router.get("/models", tags=["models"], response_model=schemas.ModelsView)
    def models() -> dict[str, Any]:
        """Loaded pipelines, and the bundles with their metrics per split and the names of their plots."""
        return service.models()

    @router.get(
        "/models/{bundle}/plots/{plot}",
        tags=["models"],
        response_class=FileResponse,
        responses={**schemas.NOT_FOUND, **PNG},
    )
    def model_plot(bundle: str, plot: str) -> FileResponse:
        """An evaluation plot a bundle ships (a name from ``/models``' ``plots``), as PNG."""
        path = service.plot_path(bundle, plot)
        if path is None:
            raise HTTPException(404, f"bundle {bundle!r} has no plot {plot!r}")
        return FileResponse(path, media_type="image/png")


def _analyze_route(router: APIRouter, service: AnalysisService, upload_limit: int, max_pixels: int) -> None:
    @router.post(
        "/analyze",
        tags=["analyses"],
        response_model=schemas.AnalysisView,
        responses=schemas.ANALYZE_RESPONSES,
    )
    async def analyze(
        request: Request,
        file: Annotated[
            UploadFile, File(description="PNG, JPEG, TIFF, BMP or DICOM; type read from the content")
        ],
        pipeline: Annotated[
            str | None,
            Form(
                description="skin, polyp, chest-xray, or auto: the pipeline of the image's modality, refused "
                "(out of scope) when none takes it (default: auto when the modality classifier is loaded, "
                "as in the web app; else the first pipeline)"
            ),
        ] = None,
        clahe: Annotated[bool, Form(description="contrast-limited histogram equalisation first")] = False,
        tta: Annotated[
            bool | None,
            Form(
                description="flip test-time augmentation (gives the uncertainty); unset: each model as "
                "chosen on its validation split"
            ),
        ] = DEFAULT_TTA,
    ) -> dict[str, Any]:
        """Analyse one image; the result is stored in the history (de-identified pixels only). An error about
        the file names it by its file name (`security.upload_name`: no folders)."""
        service.resolve_pipeline(pipeline or None)  # fail fast, before reading the file into memory
        data = await security.read_upload(file, upload_limit)
        name = security.upload_name(file.filename) or None
        record = await run_in_threadpool(
            service.analyze_bytes, data, pipeline or None, clahe, True, tta, file_name=name
        )
        return service.to_view(record, base_url(request))


def _history_routes(router: APIRouter, service: AnalysisService) -> None:
    @router.get("/analyses", tags=["analyses"], response_model=schemas.AnalysisPage)
    def list_analyses(
        request: Request,
        page: Annotated[int, Query(ge=1)] = 1,
        page_size: Annotated[int, Query(ge=1, le=200)] = 20,
        pipeline: str | None = None,
        label: str | None = None,
        out_of_scope: Annotated[
            bool | None, Query(description="true: only refused analyses; false: only the others")
        ] = None,
    ) -> dict[str, Any]:
        """Stored analyses, newest first: ``{"items", "total", "page", "page_size"}``."""
        records, total = service.list(page, page_size, pipeline, label, out_of_scope)
        items = [service.to_view(r, base_url(request)) for r in records]
        return {"items": items, "total": total, "page": page, "page_size": page_size}

    @router.get(
        "/analyses/{analysis_id}",
        tags=["analyses"],
        response_model=schemas.AnalysisView,
        responses=schemas.NOT_FOUND,
    )
    def get_analysis(request: Request, analysis_id: str) -> dict[str, Any]:
        record = service.get(analysis_id)
        if record is None:
            raise HTTPException(404, f"no analysis {analysis_id!r}")
        return service.to_view(record, base_url(request))

    @router.delete(
        "/analyses/{analysis_id}",
        tags=["analyses"],
        response_model=schemas.Deleted,
        responses=schemas.NOT_FOUND,
    )
    def delete_analysis(analysis_id: str) -> dict[str, Any]:
        """Delete the record, the files no other analysis references, and the UI's copies of its files."""
        if not service.delete(analysis_id):
            raise HTTPException(404, f"no analysis {analysis_id!r}")
        return {"deleted": analysis_id}

    @router.get(
        "/analyses/{analysis_id}/{kind}",
        tags=["analyses"],
        response_class=FileResponse,
        responses={**schemas.NOT_FOUND, **PNG},
    )
    def picture(analysis_id: str, kind: PictureKind) -> FileResponse:
        """The stored input (de-identified pixels), mask (valued as the analysis's segmentation.mask_values
        says), overlay, Grad-CAM or thumbnail, as PNG."""
        path = service.file_path(analysis_id, "thumb" if kind == "thumbnail" else kind)
        if path is None:
            raise HTTPException(404, f"analysis {analysis_id!r} has no {kind}")
        return FileResponse(path, media_type="image/png", headers={"Cache-Control": "private, no-store"})
