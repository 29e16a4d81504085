"""Hugging Face Space entry point (Gradio SDK): the medlens REST API + UI with the bundled models in ./models.

The Space runs ``python app.py``; tools that import it find the FastAPI ``app`` and the Gradio ``demo``.
Loading the models happens once, here, and nothing is fetched from the network.

- On a Space (``SPACE_ID`` is set) it listens on 0.0.0.0:7860 as Spaces expect; the platform controls
  access (public or private Space). Set the Space secret ``MEDLENS_API_TOKEN`` to require a bearer token on
  ``/api/*`` and a login on the UI (any user name, the token as password).
- Elsewhere the rule of ``medlens serve`` applies: all interfaces only with ``MEDLENS_API_TOKEN``; without
  one it listens on 127.0.0.1 and says so.

History lives in ``MEDLENS_HOME``: ``/data/medlens`` when the Space has persistent storage, else
``~/.medlens`` (lost on restart). Every visitor of a public Space sees the same history: keep the Space
private or set the token when real images are uploaded. See docs/DEPLOY.md.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent
if importlib.util.find_spec("medlens") is None:  # a Space that installs the requirements but not the package
    sys.path.insert(0, str(ROOT / "src"))

from medlens.app.api import create_app  # noqa: E402
from medlens.app.server import configure_process  # noqa: E402
from medlens.app.settings import ServerSettings, load_settings  # noqa: E402

logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
logger = logging.getLogger("medlens.space")

ON_SPACE = bool(os.environ.get("SPACE_ID"))


def _space_home() -> Path | None:
    """The Space's persistent storage, when it has some; else None (``~/.medlens``)."""
    data = Path("/data")
    return data / "medlens" if ON_SPACE and data.is_dir() and os.access(data, os.W_OK) else None


# The MEDLENS_* variables (a Space's secrets and variables) win over these defaults of the Space.
SETTINGS = load_settings(
    base=ServerSettings(
        models_dir=ROOT / "models",
        home=_space_home(),
        examples_dir=ROOT / "examples",
        # Spaces show the app inside an iframe on huggingface.co
        frame_ancestors="'self' https://huggingface.co https://*.hf.space" if ON_SPACE else "'self'",
    )
)
TOKEN = SETTINGS.token
configure_process(SETTINGS)  # torch's threads: this is where the process starts
app = create_app(SETTINGS)
demo = app.state.demo


def main() -> None:
    import uvicorn

    host = os.environ.get("GRADIO_SERVER_NAME", "0.0.0.0")
    port = int(os.environ.get("GRADIO_SERVER_PORT", os.environ.get("PORT", "7860")))
    if not ON_SPACE and not TOKEN and host not in ("127.0.0.1", "localhost", "::1"):
        logger.warning(
            "MEDLENS_API_TOKEN is not set: listening on 127.0.0.1 only (set it to listen on %s)", host
        )
        host = "127.0.0.1"
    logger.info("medlens on http://%s:%d (API docs at /docs)", host, port)
    uvicorn.run(app, host=host, port=port, proxy_headers=True, forwarded_allow_ips="*" if ON_SPACE else None)


if __name__ == "__main__":
    main()
