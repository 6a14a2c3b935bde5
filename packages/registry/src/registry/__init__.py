"""lmstack registry: a local artifact registry with content-addressed versions, stages and aliases, retention,
and Ed25519 signatures in DSSE envelopes."""

from registry.errors import GateError, IntegrityError, NotFoundError, RegistryError, SignatureError
from registry.hooks import RegistryCallback
from registry.index import STAGES
from registry.lifecycle import Registry
from registry.manifest import FileEntry, ModelVersion
from registry.retention import Decision, RetentionPlan, RetentionPolicy
from registry.signing import keygen, pae
from registry.store import Event, GcResult, ModelInfo

__version__ = "0.2.0"
__all__ = ["STAGES", "Decision", "Event", "FileEntry", "GateError", "GcResult", "IntegrityError", "ModelInfo",
           "ModelVersion", "NotFoundError", "Registry", "RegistryCallback", "RegistryError", "RetentionPlan",
           "RetentionPolicy", "SignatureError", "keygen", "pae"]
