"""Least-recently-used eviction order for one worker's loaded models (pure logic).

`LruOrder` knows the loaded models' names in order of last use and answers which to evict
when one more must fit under a count cap, or when memory is short. It never evicts the model
being made room for.
"""

from __future__ import annotations

from collections import OrderedDict


class LruOrder:
    """Names of loaded models, least recently used first.

    `max_models` caps how many may be loaded at once (0: no cap).
    """

    def __init__(self, max_models: int = 0) -> None:
        if max_models < 0:
            raise ValueError(f"max_models must be >= 0, got {max_models}")
        self.max_models = max_models
        self._order: OrderedDict[str, None] = OrderedDict()

    def __len__(self) -> int:
        return len(self._order)

    def __contains__(self, name: object) -> bool:
        return name in self._order

    def names(self) -> list[str]:
        """The loaded names, least recently used first."""
        return list(self._order)

    def touch(self, name: str) -> None:
        """Record a use of `name` (adding it if new): it becomes the most recently used."""
        self._order[name] = None
        self._order.move_to_end(name)

    def remove(self, name: str) -> None:
        """Forget `name`; no error if it is not there."""
        self._order.pop(name, None)

    def over_cap(self, adding: str) -> list[str]:
        """The names to evict, oldest first, so that `adding` fits under the count cap."""
        if not self.max_models:
            return []
        others = [name for name in self._order if name != adding]
        room = self.max_models - 1  # slots left for the others once `adding` is in
        return others[: max(0, len(others) - room)]

    def victim(self, keep: str | None = None) -> str | None:
        """The least recently used name other than `keep`, or None when there is none."""
        for name in self._order:
            if name != keep:
                return name
        return None
