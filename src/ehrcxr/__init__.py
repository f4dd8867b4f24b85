"""ehrcxr: the reference benchmark for fusing MIMIC-IV EHR with MIMIC-CXR chest X-rays."""

__version__ = "0.1.0"
