"""Announce this rank, then sleep until a signal ends it (default dispositions)."""

import _common

_common.ready()
_common.sleep_forever()
