"""`import px` for scripts and notebooks: the px DataFrame API of apptrace (see apptrace.px)."""

import sys

import apptrace.px as _px

sys.modules[__name__] = _px
