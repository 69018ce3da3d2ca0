"""In-process Kubernetes API emulator (see docs/emulator.md)."""

from .admission import AdmissionCall
from .api import Request, Response
from .errors import ApiError
from .server import Emulator

__all__ = ["AdmissionCall", "ApiError", "Emulator", "Request", "Response"]
