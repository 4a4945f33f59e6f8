"""Progress bars for long loops over members (tqdm on stderr; silent when not asked for)."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from sense_core.ensemble import MemberStore


def batches_with_progress(
    store: MemberStore, batch_size: int = 256, progress: bool = False, description: str = ""
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """``store.iter_batches`` with a members-per-second progress bar when ``progress`` is set."""
    if not progress:
        yield from store.iter_batches(batch_size)
        return
    from tqdm import tqdm

    with tqdm(total=len(store), unit="member", desc=description, leave=False) as bar:
        for indices, batch in store.iter_batches(batch_size):
            yield indices, batch
            bar.update(len(indices))
