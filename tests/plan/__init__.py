"""`plmjax plan` tests; the marker for those that compile for a TPU topology."""
import importlib.util

import pytest

needs_libtpu = pytest.mark.skipif(importlib.util.find_spec("libtpu") is None,
                                  reason="libtpu is absent: pip install 'jax[tpu]' (plmjax's [tpu] extra)")
