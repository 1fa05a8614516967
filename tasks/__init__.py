"""seqio task registrations, installed as `plmjax.tasks`: importing this package registers every task."""
from . import pretraining  # noqa: F401
from . import objectives  # noqa: F401
from . import finetune  # noqa: F401
from . import prompting  # noqa: F401
