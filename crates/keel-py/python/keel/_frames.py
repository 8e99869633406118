"""Tables as pandas data frames when pandas is importable, else as lists of dicts.

pandas is optional so that ``keel`` installs anywhere (a training node, a minimal CI image);
every table-returning function goes through :func:`table`, so the two forms hold the same rows
and columns.
"""

from typing import Any, Dict, List, Optional, Sequence


def pandas() -> Optional[Any]:
    """The pandas module, or None when it cannot be imported."""
    try:
        import pandas as pd  # type: ignore[import-untyped,unused-ignore]
    except ImportError:
        return None
    return pd


def table(rows: List[Dict[str, Any]], columns: Sequence[str]) -> Any:
    """A data frame of ``rows`` with ``columns`` in that order, or the rows themselves.

    Without pandas each row is a dict with every column (None where a record lacks one), so code
    written against either form sees the same keys.
    """
    pd = pandas()
    if pd is None:
        return [{c: r.get(c) for c in columns} for r in rows]
    return pd.DataFrame.from_records(rows, columns=list(columns))


def columns_in_order(rows: List[Dict[str, Any]], first: Sequence[str]) -> List[str]:
    """``first``, then every other key in the order the rows first use it."""
    seen = dict.fromkeys(first)
    for r in rows:
        for k in r:
            if k not in seen:
                seen[k] = None
    return list(seen)
