"""Run storage: atomic Parquet datasets under a run directory on local disk or S3."""

from amp_ray.storage.dataset import Dataset, DatasetWriter, Manifest
from amp_ray.storage.location import Location, check_writable, open_location
from amp_ray.storage.run import RunDir, StageRecord
from amp_ray.storage.schemas import SCHEMAS

__all__ = [
    "SCHEMAS",
    "Dataset",
    "DatasetWriter",
    "Location",
    "Manifest",
    "RunDir",
    "StageRecord",
    "check_writable",
    "open_location",
]
