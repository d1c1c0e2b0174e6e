"""robustlib: adversarial fine-tune with a dynamically regulated adversary (Hou et al. 2022)."""
from .io import RobustlibError
from .config import RunConfig, get_profile, setup
from .profiles import PROFILES, Profile

__version__ = "0.1.0"
__all__ = ["PROFILES", "Profile", "RobustlibError", "RunConfig", "get_profile", "setup", "__version__"]
