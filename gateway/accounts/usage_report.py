"""Usage and costs in the shapes of OpenAI's Usage API, from the ledger.

``GET /v1/organization/usage/completions`` and ``GET /v1/organization/costs``:
pages of time buckets (``bucket_width`` ``1m``/``1h``/``1d``, buckets laid from
``start_time``), ``group_by`` ``api_key_id`` and ``model`` (costs also
``line_item``), filters ``api_key_ids`` and ``models``, ``limit`` buckets per
page and ``page`` cursors. Costs are summed exactly in pico-dollars and
rendered as USD numbers.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from gateway.accounts.pricing import usd
from gateway.errors import InvalidRequestError

MAX_INT = 10**11  # Unix seconds up to the year 5138; limits and cursors far below
WIDTHS = {"1m": 60, "1h": 3600, "1d": 86400}
PAGE_LIMITS = {"1m": (60, 1440), "1h": (24, 168), "1d": (7, 31)}  # (default, max), as OpenAI's
COLUMNS = {"api_key_id": "key_id", "model": "model"}
ALWAYS_NULL = ("project_id", "user_id", "batch", "service_tier")
LINE_ITEMS = (("input", "cost_input_pico"), ("cached input", "cost_cached_input_pico"),
              ("output", "cost_output_pico"))


@dataclass(frozen=True)
class ReportQuery:
    start_time: int
    end_time: int
    bucket_width: str
    group_by: tuple[str, ...]
    limit: int
    first_bucket: int
    api_key_ids: tuple[str, ...]
    models: tuple[str, ...]


def _ints(params, name: str, required: bool = False) -> int | None:
    raw = params.get(name)
    if raw is None:
        if required:
            raise InvalidRequestError(f"Missing required parameter: '{name}'.", param=name)
        return None
    try:
        value = int(raw)
    except ValueError:
        raise InvalidRequestError(f"'{name}' must be an integer, got {raw!r}.", param=name) from None
    if not 0 <= value <= MAX_INT:
        raise InvalidRequestError(f"'{name}' must be between 0 and {MAX_INT}, got {value}.", param=name)
    return value


def _list(params, name: str) -> tuple[str, ...]:
    """``name=a&name=b``, ``name[]=a`` or ``name=a,b``."""
    values = list(params.getlist(name)) + list(params.getlist(name + "[]"))
    return tuple(v.strip() for value in values for v in value.split(",") if v.strip())


def parse_query(params, allowed_groups: tuple[str, ...]) -> ReportQuery:
    start = _ints(params, "start_time", required=True)
    end = _ints(params, "end_time")
    end = int(time.time()) + 1 if end is None else end
    width = params.get("bucket_width", "1d")
    if width not in WIDTHS:
        raise InvalidRequestError(f"'bucket_width' must be one of 1m, 1h, 1d, got {width!r}.", param="bucket_width")
    if end <= start:
        raise InvalidRequestError("'end_time' must be after 'start_time'.", param="end_time")
    group_by = _list(params, "group_by")
    for name in group_by:
        if name not in allowed_groups:
            raise InvalidRequestError(f"'group_by' accepts {', '.join(allowed_groups)}; got {name!r}.",
                                      param="group_by")
    default, most = PAGE_LIMITS[width]
    limit = _ints(params, "limit") or default
    if not 1 <= limit <= most:
        raise InvalidRequestError(f"'limit' must be between 1 and {most} for bucket_width={width}.", param="limit")
    page = params.get("page")
    first = _ints(params, "page") if page else 0
    return ReportQuery(start, end, width, group_by, limit, max(0, first), _list(params, "api_key_ids"),
                       _list(params, "models"))


async def _buckets(store, account: str, query: ReportQuery, groups: tuple[str, ...]):
    width = WIDTHS[query.bucket_width]
    total = -(-(query.end_time - query.start_time) // width)
    last = min(total, query.first_bucket + query.limit)
    rows = await store.usage_totals(query.start_time * 1000, min(query.end_time, query.start_time + last * width) * 1000,
                                    width * 1000, tuple(COLUMNS[g] for g in groups), account=account,
                                    key_ids=query.api_key_ids, models=query.models)
    by_bucket: dict[int, list[dict]] = {}
    for row in rows:
        by_bucket.setdefault(row["bucket"], []).append(row)
    pages = []
    for index in range(query.first_bucket, last):
        start = query.start_time + index * width
        pages.append((start, min(start + width, query.end_time), by_bucket.get(index, [])))
    more = last < total
    return pages, more, str(last) if more else None


def _group_fields(row: dict, groups: tuple[str, ...]) -> dict:
    fields = {name: None for name in ALWAYS_NULL}
    for name in ("api_key_id", "model"):
        fields[name] = row[COLUMNS[name]] if name in groups else None
    return fields


async def usage_page(store, account: str, query: ReportQuery) -> dict:
    pages, more, cursor = await _buckets(store, account, query, query.group_by)
    data = []
    for start, end, rows in pages:
        results = [{"object": "organization.usage.completions.result",
                    "input_tokens": row["input_tokens"], "output_tokens": row["output_tokens"],
                    "input_cached_tokens": row["input_cached_tokens"], "input_audio_tokens": 0,
                    "output_audio_tokens": 0, "num_model_requests": row["num_model_requests"],
                    **_group_fields(row, query.group_by)} for row in rows]
        data.append({"object": "bucket", "start_time": start, "end_time": end, "results": results})
    return {"object": "page", "data": data, "has_more": more, "next_page": cursor}


async def costs_page(store, account: str, query: ReportQuery) -> dict:
    by_line = "line_item" in query.group_by
    groups = tuple(g for g in query.group_by if g != "line_item")
    pages, more, cursor = await _buckets(store, account, query, groups)
    data = []
    for start, end, rows in pages:
        results = []
        for row in rows:
            items = LINE_ITEMS if by_line else ((None, "cost_pico"),)
            for line_item, column in items:
                results.append({"object": "organization.costs.result",
                                "amount": {"value": float(usd(row[column])), "currency": "usd"},
                                "line_item": line_item, "project_id": None,
                                "api_key_id": row[COLUMNS["api_key_id"]] if "api_key_id" in groups else None,
                                "model": row["model"] if "model" in groups else None})
        data.append({"object": "bucket", "start_time": start, "end_time": end, "results": results})
    return {"object": "page", "data": data, "has_more": more, "next_page": cursor}
