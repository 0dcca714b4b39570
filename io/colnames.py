"""What column names and values say about a column, for :mod:`recis.io.infer`: names of
ids, keys and times (in any case, with or without separators, in other scripts), times
written as numbers (epochs, ``YYYYMMDD``) or as text. Pure predicates, no schema."""

from __future__ import annotations

import re

import numpy as np
import pyarrow as pa

# a name's last word, after a separator (any case) or in camelCase (``movieId``, ``unixReviewTime``;
# case-sensitive there, so that ``paid`` or ``valid`` are not ids)
# uid, iid too; after a non-ASCII letter any case (Chinese schemas: 用户ID, 商品id)
ID_NAME = re.compile(r"(?i:(?:^|[_\-.])[a-z]?ids?)$|[a-z0-9](?:Id|ID)s?$|[^\x00-\x7f](?i:ids?)$")
# what logs name their entities, written with or without "id" and a separator (``itemid``,
# ``visitorid``, ``user``, ``movie_no``: RetailRocket, Taobao, Last.fm)
_ENTITIES = (
    "user|item|product|sku|spu|goods|video|movie|song|track|artist|album|book|ad|campaign"
    "|advertiser|creative|shop|store|seller|merchant|brand|cat|cate|category|doc|news|article"
    "|query|session|visitor|customer|member|account|device|app|site|publisher|author|channel"
    "|city|region|province|country|zip|zipcode|postcode|poi|hotel|business|course|tag|genre"
)
# what logs name their events and records: ids only with the suffix (``transactionid``,
# ``order_no``; a ``rating`` or ``click`` column is a number)
_RECORDS = (
    "transaction|order|txn|request|impression|event|click|cart|basket|invoice|payment|ticket"
    "|message|comment|review|rating|play|visit|search|page|coupon|promotion|offer|feed|photo"
    "|image|group|game|player|listing|job|company|question|answer|topic|playlist|episode|post"
)
ENTITY_NAME = re.compile(
    rf"(?i)(?:^|[_\-.])(?:(?:{_ENTITIES})(?:_?ids?|_?no|_?key|_?code)?|(?:{_RECORDS})_?(?:ids?|no|key))$"
)
# what a row number or an index is named (pandas' ``Unnamed: 0`` and ``__index_level_0__``)
KEY_NAME = re.compile(
    r"(?i)^(?:id|key|index|idx|row|row_?(?:id|no|num|number)|unnamed: ?\d+|__index_level_\d+__)$"
)
_TIME_WORDS = "ts|time|timestamp|date|datetime|dt|day|hour"
TIME_NAME = re.compile(
    rf"(?i:(?:^|[_\-.])(?:{_TIME_WORDS}))$|[a-z0-9](?:Ts|TS|Time|Timestamp|Date|Datetime|Day|Hour)$"
)
MONTHS = re.compile(
    r"(?i)\b(?:jan|feb|mar|apr|may|jun|jul|aug|sep|sept|oct|nov|dec)[a-z]*\.?(?=[\s\d,./-]|$)"
)
# a date or time written as text: digits and date punctuation only (month names taken out),
# a year 1900-2099 among them (``09 13, 2009``, ``2016/03/09 08:00``, ``13-Mar-2016``)
DATE_TEXT = re.compile(r"^(?=.*(?<!\d)(?:19|20)\d\d(?!\d))(?=(?:\D*\d){6})[\d\s/.,:TZ+-]+$")


def is_key(column: str, v: np.ndarray) -> bool:
    """Whether whole numbers with a different value on nearly every row identify the rows
    (named as an id or an index, numbered consecutively, or hashes beyond 2^53) rather than
    measure something (a duration in milliseconds, a price in cents: a dense feature)."""
    if ID_NAME.search(column) or ENTITY_NAME.search(column) or KEY_NAME.search(column):
        return True
    steps = np.diff(np.sort(v))
    return bool(np.mean(steps == 1) > 0.9 or np.abs(v).max() >= 2**53)


def time_encoding(v: np.ndarray) -> str | None:
    """The time encoding that numbers look like, or None: seconds, milliseconds or
    microseconds since 1970 (years 1973 to 2103), or whole ``YYYYMMDD`` / ``YYYYMMDDHH``."""
    lo, hi = float(v.min()), float(v.max())
    for unit, scale in (("seconds", 1.0), ("milliseconds", 1e3), ("microseconds", 1e6)):
        if 1e8 * scale <= lo and hi <= 4.2e9 * scale:
            return f"{unit} since 1970"
    if not np.all(v == np.floor(v)):
        return None
    for form, day in (("YYYYMMDD", v), ("YYYYMMDDHH", v // 100)):
        if form == "YYYYMMDDHH" and not np.all(v % 100 < 24):
            continue
        y, m, d = day // 10000, day // 100 % 100, day % 100
        if np.all((y >= 1900) & (y <= 2100) & (m >= 1) & (m <= 12) & (d >= 1) & (d <= 31)):
            return form
    return None


UNITS = {
    "seconds since 1970": "s",
    "milliseconds since 1970": "ms",
    "microseconds since 1970": "us",
}
# names of the parts of a time a log may already hold as columns
PART_NAMES = {
    "hour": {"hour", "hour_of_day", "hod", "hr"},
    "weekday": {"weekday", "day_of_week", "dayofweek", "dow", "wday", "week_day"},
}


def text_dates(texts: pa.Array) -> bool:
    """Whether nearly all of these strings are dates or times (:data:`DATE_TEXT`)."""
    sample = texts.slice(0, 2000).to_pylist()
    hits = sum(bool(DATE_TEXT.match(MONTHS.sub("", t).strip())) for t in sample)
    return hits >= 0.9 * len(sample)
