"""`import px` for scripts and notebooks: the px DataFrame API of apptrace (see apptrace.query.px)."""

import sys

import apptrace.query.px as _px

sys.modules[__name__] = _px
