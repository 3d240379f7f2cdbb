"""Finding, loading, checking and splitting a task's data.

Resolution for each split: the task's folder under the data directory (`data.data_dir` or `HARNESS_DATA_DIR`) when
the file is there, else the hub dataset when online. Rows are checked against the task's schema (fields present,
labels in the label set), derived splits are carved deterministically (stratified or by group), and profile subsets
are stratified samples with a fixed seed, so every run of a profile sees the same rows. What was used is recorded
as lineage: source, file hash, row count, and a digest of the chosen row indices.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Optional

import numpy as np

from harness import hub
from harness.config import DeriveSpec, RunConfig, TaskSpec
from harness.data.files import diagnose_file
from harness.errors import ConfigError, DataError

SUBSET_SEED = 0  # profile subsets (train_size/test_size) do not move with the run seed: same rows for every seed


@dataclass
class SplitData:
    """One split, ready for a family: rows (a `datasets.Dataset`) plus where they came from."""

    name: str
    dataset: Any  # datasets.Dataset with the task's columns renamed to roles, and `_row` (row in the source)
    source: str  # file path or hub reference
    source_kind: str  # "local" | "hub" | "file"
    source_sha256: Optional[str]
    source_rows: int
    selection: list[str] = field(default_factory=list)  # what was done to get from the source to these rows
    subset: bool = False  # a profile subset of the split, not all of it
    official: bool = True  # false when a fallback changed the split (carved out of, or reduced by, another one)
    meta: dict[str, Any] = field(default_factory=dict)  # what the reader found (e.g. the SQuAD file version)
    text_roles: tuple[str, ...] = ()  # the columns that hold text (counted when empty)
    whole_rows: Optional[int] = None  # rows of the split before a profile's subset was drawn (None: no subset)

    @property
    def rows(self) -> int:
        return len(self.dataset)

    @property
    def user_file(self) -> bool:
        """The rows come from a file the user gave (`harness eval --data`, `data.test_file`), not the task's split."""
        return self.source_kind == "file"

    @property
    def count(self) -> str:
        """`150 of 11,490 rows` for a subset, `872 rows` for a whole split."""
        whole = f" of {self.whole_rows:,}" if self.subset and self.whole_rows else ""
        return f"{self.rows:,}{whole} rows"

    @property
    def label(self) -> str:
        """How the split is named to people: `test`, or `your file reviews.jsonl (sha256 1a2b3c4d5e6f)`."""
        if not self.user_file:
            return self.name
        return f"your file {Path(self.source).name} (sha256 {(self.source_sha256 or '?')[:12]})"

    def digest(self) -> str:
        h = hashlib.sha256()
        h.update((self.source_sha256 or self.source).encode())
        h.update(np.asarray(self.dataset["_row"], dtype=np.int64).tobytes())
        return h.hexdigest()[:16]

    def part(self, name: str, indices: np.ndarray, selection: str) -> SplitData:
        """The rows at `indices` of this split, as split `name`, with the same source."""
        return replace(self, name=name, dataset=self.dataset.select(indices), selection=[*self.selection, selection])

    def quality(self) -> dict[str, int]:
        """Rows whose text is empty (or only spaces) in some text field, and rows that repeat an earlier row in
        every task column: counted and reported, used as they are."""
        cols = [c for c in self.dataset.column_names if c != "_row"]
        if not cols or not self.rows:
            return {"empty_texts": 0, "duplicate_rows": 0}
        df = self.dataset.select_columns(cols).to_pandas()
        for c in df.columns:
            if df[c].dtype == object:  # nested values (SQuAD answers) compared by their text
                df[c] = df[c].map(lambda v: v if isinstance(v, str) else repr(v))
        empty = np.zeros(len(df), dtype=bool)
        for r in self.text_roles:
            if r in df.columns:
                empty |= df[r].fillna("").astype(str).str.strip().eq("").to_numpy()
        return {"empty_texts": int(empty.sum()), "duplicate_rows": int(df.duplicated().sum())}

    def lineage(self) -> dict[str, Any]:
        return {
            **self.quality(),
            "split": self.name,
            "source": self.source,
            "source_kind": self.source_kind,
            "source_sha256": self.source_sha256,
            "source_rows": self.source_rows,
            "rows": self.rows,
            "digest": self.digest(),
            "selection": "; ".join(self.selection) or "all rows",
            "official": self.official,
        }


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _builder_for(path: Path) -> tuple[str, dict[str, Any]]:
    name = path.name.lower()
    for suffix in (".gz", ".bz2", ".xz", ".zst"):
        if name.endswith(suffix):
            name = name[: -len(suffix)]
    if name.endswith((".jsonl", ".json")):
        return "json", {}
    if name.endswith(".csv"):
        return "csv", {}
    if name.endswith(".tsv"):
        return "csv", {"delimiter": "\t"}
    if name.endswith(".parquet"):
        return "parquet", {}
    raise DataError(f"{path}: unknown file type", "use .jsonl, .json, .csv, .tsv or .parquet (optionally .gz)")


def load_file(path: Path) -> Any:
    import logging

    import datasets

    builder, kwargs = _builder_for(path)
    quiet = logging.getLogger("datasets")
    level = quiet.level
    quiet.setLevel(logging.CRITICAL)  # its "Failed to load JSON" log line: the error below says it, once
    try:
        return datasets.load_dataset(builder, data_files={"data": str(path)}, split="data", **kwargs)
    except Exception as e:  # datasets raises many types (even StopIteration) for unreadable files
        specific = diagnose_file(path)
        if specific is not None:
            raise specific from None
        raise DataError(
            f"{path}: could not be read as {builder} ({e.__class__.__name__}: {str(e).splitlines()[0][:200]})",
            "check the file's format (one JSON object per line for .jsonl)",
        ) from None
    finally:
        quiet.setLevel(level)


def read_task_file(path: Path, task: TaskSpec) -> tuple[Any, dict[str, Any]]:
    """Rows of one data file as a `datasets.Dataset`, with what the reader learned about the file."""
    name = path.name.lower()
    if task.dataset.format == "squad" and (name.endswith(".json") or name.endswith(".json.gz")):
        import datasets

        from harness.data.squad import load_json, parse_squad

        obj = load_json(path, "SQuAD JSON file")
        if isinstance(obj, dict) and "data" in obj:
            sq = parse_squad(obj, str(path))
            meta = {"squad_version": sq.version, "unanswerable": sq.unanswerable, "squad_v2": sq.is_v2}
            return datasets.Dataset.from_dict(sq.rows), meta
        if isinstance(obj, list):
            return datasets.Dataset.from_list(obj), {}
        raise DataError(
            f"{path}: not in the SQuAD format (no top-level `data` list)",
            "use an official SQuAD JSON file, or JSON lines with id, context, question and answers",
        )
    return load_file(path), {}


def _load_hub(task: TaskSpec, split_name: str, hub_split: str) -> Any:
    import datasets

    ds = task.dataset
    return datasets.load_dataset(ds.hub_id, ds.hub_config, split=hub_split, revision=ds.hub_revision)


def check_rows(
    ds: Any, task: TaskSpec, where: str, row_offset: int = 1, columns: Optional[dict[str, str]] = None
) -> Any:
    """Check the task's columns exist and hold values, map label names to ids, and rename columns to roles.

    `where` names the file (or hub split) in errors; rows are numbered from `row_offset` (1 = line numbers).
    """
    import pyarrow.compute as pc

    columns = {**task.columns, **(columns or {})}
    cols = ds.column_names
    if any("." in c and c not in cols for c in columns.values()):
        # a nested field (e.g. `translation.en` in the WMT schema): struct columns become dotted columns
        ds = ds.flatten()
        cols = ds.column_names
    for role, col in columns.items():
        if col not in cols:
            raise DataError(
                f"{where}: no column '{col}' (the task's `{role}` column); columns there: "
                + ", ".join(c for c in cols if not c.startswith("_")),  # harness's own (_row) are not the file's
                f"use a file with that field, or map `columns.{role}` in the task file",
            )
        nulls = pc.is_null(ds.data.column(col))
        if pc.any(nulls).as_py():
            i = int(pc.index(nulls, True).as_py())
            raise DataError(
                f"{where}: row {i + row_offset} has no value for field '{col}'",
                "fill in or remove that row",
            )
    for role in text_roles(task):
        if role in columns:
            _check_text(ds, columns[role], role, where, row_offset)
    if task.labels is not None and "label" in columns:
        ds = _map_labels(ds, task, where, row_offset)
    rename = {col: role for role, col in columns.items() if col != role}
    carves = [*task.dataset.derive.values(), *task.dataset.fallback.values()]
    keep = set(columns.values()) | {d.group_by for d in carves if d.group_by}
    ds = ds.remove_columns([c for c in cols if c not in keep and c != "_row"])
    if rename:
        # two roles may not map onto each other's names; go through temporary names
        tmp = {col: f"__{role}" for col, role in rename.items()}
        ds = ds.rename_columns(tmp)
        ds = ds.rename_columns({f"__{role}": role for role in rename.values()})
    return ds


def text_roles(task: TaskSpec) -> tuple[str, ...]:
    from harness.families import FAMILIES

    info = FAMILIES.get(task.family)
    return tuple(r for r in (info.text_roles if info else ()) if r in task.columns)


def _check_text(ds: Any, col: str, role: str, where: str, row_offset: int) -> None:
    """A text role's column holds strings, and valid UTF-8 ones."""
    import pyarrow as pa

    arr = ds.data.column(col)
    if not (pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type)):
        values = ds[col]
        i, v = next(((i, v) for i, v in enumerate(values) if not isinstance(v, str)), (0, values[0]))
        raise DataError(
            f"{where}: row {i + row_offset}: field '{col}' holds {v!r} ({type(v).__name__}), but the task's "
            f"`{role}` must be text",
            "put text there (in JSON, a string in quotes)",
        )
    try:
        arr.validate(full=True)
    except pa.ArrowInvalid:
        i = 0
        for chunk in arr.chunks:
            for j in range(len(chunk)):
                try:
                    chunk[j].as_py()
                except UnicodeDecodeError:
                    raise DataError(
                        f"{where}: row {i + j + row_offset}: field '{col}' is not valid UTF-8 text",
                        "save the file as UTF-8 (e.g. iconv -f latin1 -t utf-8 old > new)",
                    ) from None
            i += len(chunk)
        raise


def _map_labels(ds: Any, task: TaskSpec, where: str, row_offset: int) -> Any:
    col = task.columns["label"]
    names = task.labels or []
    values = ds[col]
    if all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in values):
        arr = np.asarray(values, dtype=np.int64)
        bad = np.flatnonzero((arr < 0) | (arr >= len(names)))
        if len(bad):
            i = int(bad[0])
            raise DataError(
                f"{where}: row {i + row_offset} has label {values[i]!r}, outside the task's label set "
                f"0..{len(names) - 1} ({', '.join(names)})",
                "fix the label, or list it in the task's `labels`",
            )
        return ds
    lookup = {n: i for i, n in enumerate(names)}
    lookup.update({str(i): i for i in range(len(names))})
    ids = []
    for i, v in enumerate(values):
        key = str(v).strip()
        if key not in lookup:
            raise DataError(
                f"{where}: row {i + row_offset} has label {v!r}, not in the task's label set ({', '.join(names)})",
                "use one of those names or their ids",
            )
        ids.append(lookup[key])
    return ds.remove_columns(col).add_column(col, ids)


def _label_array(ds: Any) -> np.ndarray:
    return np.asarray(ds["label"], dtype=np.int64)


def stratified_indices(labels: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """`n` indices whose label mix matches `labels` (largest-remainder rounding), sorted."""
    classes, counts = np.unique(labels, return_counts=True)
    quota = counts * n / len(labels)
    take = np.floor(quota).astype(int)
    for i in np.argsort(-(quota - take), kind="stable")[: n - take.sum()]:
        take[i] += 1
    chosen = []
    for c, k in zip(classes, take):
        idx = np.flatnonzero(labels == c)
        chosen.append(rng.permutation(idx)[:k])
    return np.sort(np.concatenate(chosen))


def derive_indices(ds: Any, spec: DeriveSpec, split_name: str, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(rows kept in the source split, rows of the derived split), deterministic for a given seed."""
    n = len(ds)
    size = int(round(spec.size * n)) if spec.size < 1 else int(spec.size)
    if size <= 0 or size >= n:
        raise DataError(
            f"derived split '{split_name}' asks for {size} of {n} rows of '{spec.from_}'",
            "set dataset.derive.<split>.size to leave rows on both sides",
        )
    rng = np.random.default_rng(seed)
    if spec.group_by:
        groups = np.asarray(ds[spec.group_by])
        uniq = np.unique(groups)
        order = rng.permutation(len(uniq))
        taken, chosen = 0, []
        for g in uniq[order]:
            if taken >= size:
                break
            rows = np.flatnonzero(groups == g)
            chosen.append(rows)
            taken += len(rows)
        derived = np.sort(np.concatenate(chosen))
    elif spec.stratify:
        derived = stratified_indices(_label_array(ds), size, rng)
    else:
        derived = np.sort(rng.permutation(n)[:size])
    mask = np.ones(n, dtype=bool)
    mask[derived] = False
    return np.flatnonzero(mask), derived


@dataclass
class TaskData:
    splits: dict[str, SplitData]
    notes: list[str] = field(default_factory=list)  # fallbacks that were used, in words
    _lineage: Optional[dict[str, dict[str, Any]]] = field(default=None, repr=False)

    def __getitem__(self, name: str) -> SplitData:
        return self.splits[name]

    def lineage(self) -> dict[str, dict[str, Any]]:
        """Each split's lineage (computed once: it hashes and counts every row)."""
        if self._lineage is None:
            self._lineage = {name: split.lineage() for name, split in self.splits.items()}
        return self._lineage

    def quality_warnings(self) -> list[str]:
        out = []
        for name, lin in self.lineage().items():
            parts = [
                f"{lin[k]:,} {what}"
                for k, what in (
                    ("empty_texts", "row(s) with an empty text field"),
                    ("duplicate_rows", "duplicate row(s)"),
                )
                if lin[k]
            ]
            if parts:
                out.append(f"{name}: {' and '.join(parts)}, used as they are (counted in the run's lineage)")
        return out


def _data_dir(cfg: RunConfig) -> Optional[Path]:
    return Path(cfg.data.data_dir).expanduser() if cfg.data.data_dir else None


def load_source_split(task: TaskSpec, cfg: RunConfig, split: str) -> SplitData:
    spec = task.dataset.splits[split]
    looked: list[str] = []
    data_dir = _data_dir(cfg)
    if spec.local:
        if data_dir is None:
            looked.append("no data directory (set data.data_dir=... or HARNESS_DATA_DIR)")
        elif task.dataset.local_dir is None:
            looked.append("the task names no local_dir")
        else:
            path = (data_dir / task.dataset.local_dir / spec.local).resolve()
            if path.is_file():
                ds, meta = read_task_file(path, task)
                ds = ds.add_column("_row", list(range(len(ds))))
                ds = check_rows(ds, task, str(path))
                return SplitData(
                    split, ds, str(path), "local", file_sha256(path), len(ds), meta=meta, text_roles=text_roles(task)
                )
            looked.append(f"{path} (not found)")
    if spec.hub and task.dataset.hub_id:
        ref = f"hf://datasets/{task.dataset.hub_id}" + (
            f"/{task.dataset.hub_config}" if task.dataset.hub_config else ""
        )
        ref += f"@{task.dataset.hub_revision or 'main'}:{spec.hub}"
        if hub.offline():
            looked.append(f"{ref} (skipped: HF_HUB_OFFLINE is set)")
        elif not hub.reachable():
            looked.append(f"{ref} (the hub is unreachable from here)")
        else:
            try:
                ds = _load_hub(task, split, spec.hub)
            except Exception as e:  # unreachable hub, missing dataset, auth...
                looked.append(f"{ref} ({e.__class__.__name__}: {str(e).splitlines()[0][:160]})")
            else:
                ds = ds.add_column("_row", list(range(len(ds))))
                ds = check_rows(ds, task, f"{ref} row", row_offset=0, columns=task.dataset.hub_columns)
                return SplitData(split, ds, ref, "hub", None, len(ds), text_roles=text_roles(task))
    raise DataError(
        f"task '{task.name}': split '{split}' not found; looked in: " + "; ".join(looked),
        "point data.data_dir (or HARNESS_DATA_DIR) at a folder holding "
        f"{task.dataset.local_dir or '<task folder>'}/{spec.local or '<file>'}, or go online for the hub",
    )


def _subset(split: SplitData, n: Optional[int], stratify: bool) -> SplitData:
    if n is None or n >= split.rows:
        return split
    rng = np.random.default_rng([SUBSET_SEED, n])
    if stratify and "label" in split.dataset.column_names:
        idx = stratified_indices(_label_array(split.dataset), n, rng)
        how = "stratified"
    else:
        idx = np.sort(rng.permutation(split.rows)[:n])
        how = "random"
    return replace(split.part(split.name, idx, f"{how} subset of {n} (seed {SUBSET_SEED})"), subset=True)


class _SplitPlan:
    """The bookkeeping behind `load_task_data`: each source read once, each split's rows before its own derived
    splits are taken out, and the rows of a split not yet given to a derived split or a fallback."""

    def __init__(self, task: TaskSpec, cfg: RunConfig):
        self.task, self.cfg, self.spec = task, cfg, task.dataset
        self.loaded: dict[str, Any] = {}  # name -> SplitData, or the DataError saying why it is not available
        self.whole: dict[str, SplitData] = {}
        self.remaining: dict[str, np.ndarray] = {}
        self.reduced_by_fallback: set[str] = set()
        self.notes: list[str] = []

    def source(self, name: str) -> Any:
        if name not in self.loaded:
            try:
                self.loaded[name] = load_source_split(self.task, self.cfg, name)
            except DataError as e:
                self.loaded[name] = e
        return self.loaded[name]

    def carve(self, name: str, d: DeriveSpec, kind: str) -> SplitData:
        base = self.get_whole(d.from_)
        left = self.remaining.get(d.from_, np.arange(base.rows))
        keep, taken = derive_indices(base.dataset.select(left), d, name, seed=0)
        how = "stratified by label" if d.stratify else (f"grouped by {d.group_by}" if d.group_by else "random")
        part = base.part(name, left[taken], f"{kind} '{d.from_}': {len(taken)} rows ({how}, seed 0)")
        self.remaining[d.from_] = left[keep]
        return part

    def get_whole(self, name: str) -> SplitData:
        if name in self.whole:
            return self.whole[name]
        if name in self.spec.derive:
            self.whole[name] = self.carve(name, self.spec.derive[name], "derived from")
            return self.whole[name]
        got = self.source(name)
        fb = self.spec.fallback.get(name)
        if not isinstance(got, DataError):
            self.whole[name] = got
        elif fb is None:
            raise got
        else:
            part = self.carve(name, fb, "not available, so carved out of")
            self.whole[name] = replace(part, official=False)
            self.reduced_by_fallback.add(fb.from_)
            how = f"whole {fb.group_by} groups" if fb.group_by else "rows"
            self.notes.append(
                f"'{name}' data is not available here (no local file; hub offline or unreachable), "
                f"so {part.rows:,} rows of '{fb.from_}' ({how}, seed 0) became '{name}'"
            )
        return self.whole[name]

    def final(self, name: str, size: Optional[int], stratify: bool) -> SplitData:
        """Split `name` as a run gets it: without the rows given away, marked, subset."""
        s = self.get_whole(name)
        if name in self.remaining:
            rest = [
                n
                for n, d in [*self.spec.derive.items(), *self.spec.fallback.items()]
                if d.from_ == name and n in self.whole
            ]
            s = s.part(name, self.remaining[name], f"without the rows of {', '.join(rest)}")
        if name in self.reduced_by_fallback:
            s = replace(s, official=False)
        whole = s.rows
        s = _subset(s, size, stratify)
        if s.subset:
            s = replace(s, whole_rows=whole)
        if s.rows == 0:
            raise DataError(
                f"task '{self.task.name}': split '{name}' is empty (source: {s.source})", "use a split with rows"
            )
        return s


def load_task_data(task: TaskSpec, cfg: RunConfig, need: tuple[str, ...]) -> TaskData:
    """Load the splits in `need` (from 'train', 'validation', 'test'), applying fallbacks, derives, test_file and
    subsets.

    Order matters and is fixed, so a split has the same rows whatever else is loaded: first the fallbacks (a split
    whose source is missing is carved out of another, e.g. SQuAD training articles out of the dev file offline),
    then derived splits in file order, then the splits themselves without the rows given away. A split that gives
    rows to a fallback, and every split made from a fallback, is marked `official=False`.
    """
    spec = task.dataset
    if cfg.data.train_on_validation:
        if "validation" in spec.splits:
            raise ConfigError(
                f"data.train_on_validation=true: task '{task.name}' has a validation split of its own",
                "only a validation split derived from train (dataset.derive.validation) can be folded back into train",
            )
        need = tuple(n for n in need if n != "validation")
    replaced_test = bool(cfg.data.test_file)  # the user's file replaces the test split; its source is not read

    def wanted(name: str) -> bool:
        if name == "test" and replaced_test:
            return False
        return name in need or any(d.from_ == name and wanted(n) for n, d in spec.derive.items())

    plan = _SplitPlan(task, cfg)
    for name, fb in spec.fallback.items():
        if wanted(name) or wanted(fb.from_):
            plan.get_whole(name)
    for name, d in spec.derive.items():
        skip = (name == "test" and replaced_test) or (cfg.data.train_on_validation and name == "validation")
        if not skip and (wanted(name) or wanted(d.from_)):  # a validation folded back into train is not carved
            plan.get_whole(name)

    stratify = "label" in task.columns and task.labels is not None
    sizes = {"train": cfg.data.train_size, "validation": cfg.data.validation_size, "test": cfg.data.test_size}
    out: dict[str, SplitData] = {}
    for name in need:
        if name == "test" and replaced_test:
            out[name] = load_test_file(task, Path(cfg.data.test_file))
        elif name in spec.splits or name in spec.derive:
            out[name] = plan.final(name, sizes.get(name), stratify)
        elif name != "validation":  # a task may have no validation split; training then skips validation
            raise DataError(f"task '{task.name}' has no '{name}' split", "add it to dataset.splits in the task file")
    return TaskData(out, plan.notes)


def load_test_file(task: TaskSpec, path: Path) -> SplitData:
    path = path.expanduser().resolve()
    if not path.is_file():
        raise DataError(f"data file {path} does not exist", "pass an existing file to data.test_file / --data")
    ds, meta = read_task_file(path, task)
    if len(ds) == 0:
        raise DataError(f"data file {path} is empty", "use a file with rows in the task's schema")
    ds = ds.add_column("_row", list(range(len(ds))))
    ds = check_rows(ds, task, str(path))
    return SplitData(
        "test",
        ds,
        str(path),
        "file",
        file_sha256(path),
        len(ds),
        ["data.test_file: all rows"],
        official=False,  # the user's file, not the task's split: labelled as such on the run and its input
        meta=meta,
        text_roles=text_roles(task),
    )
