"""The flow-matching schedulers (UniPC, Euler); they live in :mod:`jaxvdm.models.schedulers`."""

from jaxvdm.models.schedulers import *  # noqa: F401,F403
from jaxvdm.models.schedulers import __all__  # noqa: F401
