"""Product logic on top of the bundles: pipelines (segment -> features -> classify -> advice) defined by the
YAML files beside this module, the analysis record they return, batch prediction and DICOM SEG export."""
