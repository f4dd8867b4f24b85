"""Hand-built MIMIC sources for known-answer tests: a few rows, written into the real schema."""

from __future__ import annotations

import gzip
import io
import sqlite3
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from ehrcxr.data.cxr import METADATA_COLUMNS, image_path
from ehrcxr.data.database import create_sqlite_source, sqlite_url

T0 = datetime(2150, 3, 1, 10, 30, 0)


def ts(dt: datetime | None) -> str | None:
    return None if dt is None else dt.strftime("%Y-%m-%d %H:%M:%S")


class TinySource:
    """An embedded source built row by row; ``url`` and ``cxr_root`` point at it."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.conn: sqlite3.Connection = create_sqlite_source(root / "mimiciv")
        self.cxr_root = root / "cxr"
        self.cxr_rows: list[dict] = []
        self._next = {
            "subject": 10_000_001,
            "hadm": 20_000_001,
            "stay": 30_000_001,
            "study": 50_000_001,
        }

    @property
    def url(self) -> str:
        return sqlite_url(self.root / "mimiciv" / "mimiciv.sqlite")

    def _id(self, kind: str) -> int:
        self._next[kind] += 1
        return self._next[kind] - 1

    def insert(self, table: str, **values: object) -> None:
        cols = ", ".join(values)
        marks = ", ".join("?" * len(values))
        self.conn.execute(f"INSERT INTO {table} ({cols}) VALUES ({marks})", list(values.values()))

    def patient(self, anchor_age: int = 60, anchor_year: int = 2150, gender: str = "M") -> int:
        sid = self._id("subject")
        self.insert(
            "mimiciv_hosp.patients",
            subject_id=sid,
            gender=gender,
            anchor_age=anchor_age,
            anchor_year=anchor_year,
            anchor_year_group="2014 - 2016",
        )
        return sid

    def admission(
        self,
        subject_id: int,
        admittime: datetime = T0 - timedelta(hours=3),
        dischtime: datetime | None = T0 + timedelta(days=20),
        admission_type: str = "EW EMER.",
        died: int = 0,
        race: str = "WHITE",
        codes: tuple[tuple[str, int], ...] = (("4019", 9),),
    ) -> int:
        hadm = self._id("hadm")
        self.insert(
            "mimiciv_hosp.admissions",
            subject_id=subject_id,
            hadm_id=hadm,
            admittime=ts(admittime),
            dischtime=ts(dischtime),
            deathtime=ts(dischtime) if died else None,
            admission_type=admission_type,
            race=race,
            hospital_expire_flag=died,
        )
        for seq, (code, version) in enumerate(codes, start=1):
            self.insert(
                "mimiciv_hosp.diagnoses_icd",
                subject_id=subject_id,
                hadm_id=hadm,
                seq_num=seq,
                icd_code=code,
                icd_version=version,
            )
        return hadm

    def stay(self, subject_id: int, hadm_id: int, intime: datetime = T0, hours: float = 60) -> int:
        stay_id = self._id("stay")
        outtime = intime + timedelta(hours=hours)
        self.insert(
            "mimiciv_icu.icustays",
            subject_id=subject_id,
            hadm_id=hadm_id,
            stay_id=stay_id,
            first_careunit="Medical Intensive Care Unit (MICU)",
            last_careunit="Medical Intensive Care Unit (MICU)",
            intime=ts(intime),
            outtime=ts(outtime),
            los=round(hours / 24, 6),
        )
        return stay_id

    def simple_stay(self, hours: float = 60, **admission: object) -> tuple[int, int, int]:
        """A patient with one admission and one ICU stay that passes every exclusion."""
        sid = self.patient()
        hadm = self.admission(sid, **admission)
        return sid, hadm, self.stay(sid, hadm, hours=hours)

    def film(
        self,
        subject_id: int,
        when: datetime,
        view: str = "AP",
        dicom_id: str | None = None,
        study_id: int | None = None,
        file: str = "ok",
        ms: int = 0,
    ) -> str:
        """A metadata row and its JPEG (none if file="missing"; truncated if "corrupt")."""
        dicom_id = dicom_id or f"{len(self.cxr_rows):08x}-00000000-00000000-00000000-00000000"
        study_id = study_id or self._id("study")
        self.cxr_rows.append(
            {
                "dicom_id": dicom_id,
                "subject_id": subject_id,
                "study_id": study_id,
                "PerformedProcedureStepDescription": "CHEST (PORTABLE AP)",
                "ViewPosition": view,
                "Rows": 40,
                "Columns": 32,
                "StudyDate": int(when.strftime("%Y%m%d")),
                "StudyTime": int(when.strftime("%H%M%S")) + ms / 1000,
                "ProcedureCodeSequence_CodeMeaning": "CHEST (PORTABLE AP)",
                "ViewCodeSequence_CodeMeaning": "antero-posterior",
                "PatientOrientationCodeSequence_CodeMeaning": "Erect",
            }
        )
        if file != "missing":
            path = image_path(self.cxr_root, subject_id, study_id, dicom_id)
            path.parent.mkdir(parents=True, exist_ok=True)
            pixels = np.random.default_rng(len(self.cxr_rows)).integers(
                0, 255, (40, 32), dtype=np.uint8
            )
            buf = io.BytesIO()
            Image.fromarray(pixels, mode="L").save(buf, format="JPEG")
            data = buf.getvalue()
            path.write_bytes(data[: len(data) // 3] if file == "corrupt" else data)
        return dicom_id

    def close(self) -> None:
        self.conn.commit()
        self.conn.close()
        self.cxr_root.mkdir(parents=True, exist_ok=True)
        meta = pd.DataFrame(self.cxr_rows, columns=list(METADATA_COLUMNS))
        with gzip.open(self.cxr_root / "mimic-cxr-2.0.0-metadata.csv.gz", "wt") as f:
            meta.to_csv(f, index=False)
