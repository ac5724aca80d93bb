"""Raw splits as numpy arrays, before sampling and subgroup assignment, and their shared checks.

Readers return a ``RawSplit``; ``load_dataset`` samples, carves and labels groups on these and
turns them into torch ``Split``s only at the end.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace

import numpy as np

from compression import access
from compression.errors import InvalidInput

__all__ = ["RawSplit", "MAX_CLASSES", "check_not_empty", "check_labels", "check_declared",
           "require_exists", "int_label_classes", "to_channels"]

# Integer labels name classes 0..max(label): a stray huge label must not make a huge tuple.
MAX_CLASSES = 100_000


@dataclass(frozen=True)
class RawSplit:
    """One split as read from its source.

    x: [N, C, H, W] uint8, C-contiguous.
    y: [N] int64 class ids in [0, len(class_names)).
    attr: [N] str attribute values (the source's ``group`` field), or None when it has none.
    origin: the file or directory it came from, for error messages.
    """

    x: np.ndarray
    y: np.ndarray
    attr: np.ndarray | None
    class_names: tuple[str, ...]
    origin: str

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def take(self, idx: np.ndarray) -> RawSplit:
        """The samples at ``idx`` ([K] int), in that order."""
        attr = None if self.attr is None else self.attr[idx]
        return replace(self, x=np.ascontiguousarray(self.x[idx]), y=self.y[idx], attr=attr)


def check_not_empty(n: int, origin: str) -> None:
    if n == 0:
        raise InvalidInput(f"{origin} holds no samples; every split needs at least one")


def check_declared(nbytes: int, origin: str, detail: str) -> None:
    """Refuse data whose header declares more than the job may hold in memory, before any of
    it is allocated; ``detail`` says what was declared (e.g. "dims (10, 28, 28)")."""
    limit = access.decoded_limit()
    if nbytes > limit:
        raise InvalidInput(f"{origin}: {detail} make {nbytes} bytes, over the limit of {limit} "
                           "bytes a job may load; the file is corrupt, or too large: use a "
                           "smaller data set, or ask the operator to raise max_data_bytes")


def require_exists(path: os.PathLike | str, what: str, hint: str) -> None:
    """``InvalidInput`` "<what> <path> does not exist; <hint>" for a missing path, once the
    policy allows it (nothing is said about paths outside the roots). A FIFO exists: opening
    it reports what it is."""
    if not access.exists(path, what):  # a local path or an object URI
        raise InvalidInput(f"{what} {os.fspath(path)} does not exist; {hint}")


def check_labels(y: np.ndarray, num_classes: int, origin: str) -> None:
    """Every label in y: [N] must be a class id in [0, num_classes)."""
    bad = (y < 0) | (y >= num_classes)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise InvalidInput(
            f"{origin}: label {int(y[i])} (sample {i}) is out of range; class ids must be "
            f"0..{num_classes - 1} ({num_classes} classes)")


def int_label_classes(y: np.ndarray, declared: tuple[str, ...] | None, origin: str,
                      train_classes: tuple[str, ...] | None) -> tuple[str, ...]:
    """Class names for integer labels y: [N], checked against the labels.

    Train: the declared names, else "0".."max(y)". Other splits: the train names; declared
    names that differ from them are an error, since label k must mean the same class everywhere.
    """
    if train_classes is None:
        top = int(y.max()) + 1 if len(y) else 1
        if declared is None and top > MAX_CLASSES:
            raise InvalidInput(f"{origin}: label {top - 1} would make {top} classes, more than "
                               f"{MAX_CLASSES}; use class ids 0..C-1")
        names = declared if declared is not None else tuple(str(i) for i in range(max(top, 1)))
    else:
        if declared is not None and declared != train_classes:
            raise InvalidInput(
                f"{origin}: class_names {list(declared)} differ from the training set's "
                f"{list(train_classes)}; train and test must share one class set")
        names = train_classes
    check_labels(y, len(names), origin)
    return names


def to_channels(x: np.ndarray, channels: int, origin: str) -> np.ndarray:
    """x: [N, C, H, W] uint8 -> [N, channels, H, W]; channels 0 keeps C.

    Gray -> RGB repeats the plane; RGB -> gray uses the ITU-R 601-2 luma weights (as PIL's "L").
    """
    c = x.shape[1]
    if channels in (0, c):
        return x
    if c == 1 and channels == 3:
        return np.ascontiguousarray(np.repeat(x, 3, axis=1))
    if c == 3 and channels == 1:
        wide = x.astype(np.uint32)
        luma = (wide[:, 0] * 299 + wide[:, 1] * 587 + wide[:, 2] * 114 + 500) // 1000
        return np.ascontiguousarray(luma.astype(np.uint8)[:, None])
    raise InvalidInput(f"{origin}: images have {c} channels; data.channels can convert only "
                       "between 1 and 3")
