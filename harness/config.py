"""Typed configuration: task files, profiles, overrides.

A run's config is built in layers, later layers winning:

    field defaults  <  configs/profiles/<profile>.yaml  <  task.yaml `config:`  <  task.yaml `profiles.<profile>:`
                    <  environment (HARNESS_DATA_DIR, MLFLOW_TRACKING_URI)  <  command-line `key=value` overrides

Every layer is checked on its own for unknown keys, so an error names the file (or the override) that holds the bad
key. The merged result is validated once more with pydantic (types, ranges) and is what gets logged.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import typing
from pathlib import Path
from typing import Any, Literal, Optional, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from harness.errors import ConfigError

LM_FAMILIES = ("causal_lm", "masked_lm")
TRANSFER_FAMILIES = ("classification", "extractive_qa", "summarization", "translation")  # model.mode other than full
GENERATION_MODES = ("full", "lora", "prompt_tuning")  # generation has no task head to train alone (frozen)
GENERATION_FAMILIES = ("summarization", "translation")


def only_for(*families: str, **field: Any) -> Any:
    """A config field that applies to some families only: still validated everywhere, but listed (by `harness
    config`, in the run's params and resolved config) only for tasks of those families."""
    return Field(json_schema_extra={"families": list(families)}, **field)


def applies(field: Any, family: Optional[str]) -> bool:
    extra = field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}
    return family is None or "families" not in extra or family in extra["families"]


class Strict(BaseModel):
    # numbers given where text is expected (run_name=2024) are taken as text
    model_config = ConfigDict(
        extra="forbid", validate_assignment=True, populate_by_name=True, coerce_numbers_to_str=True
    )


# --------------------------------------------------------------------------------------------------------------------
# Task files: tasks/<name>/task.yaml
# --------------------------------------------------------------------------------------------------------------------


class SplitSpec(Strict):
    """Where one split comes from: a file inside the task's local folder, and/or a split name on the hub."""

    local: Optional[str] = None
    hub: Optional[str] = None

    @model_validator(mode="after")
    def _one_source(self) -> SplitSpec:
        if not self.local and not self.hub:
            raise ValueError("a split needs `local` (a file name) or `hub` (a hub split name)")
        return self


class DeriveSpec(Strict):
    """A split carved deterministically out of another one (e.g. validation out of train).

    `size` below 1 is a fraction, otherwise a count. `stratify` keeps the label distribution; `group_by` keeps all rows
    that share a value of that column on the same side (e.g. all questions of one article).
    """

    from_: str = Field(alias="from")
    size: float = Field(gt=0)
    stratify: bool = False
    group_by: Optional[str] = None

    @model_validator(mode="after")
    def _check(self) -> DeriveSpec:
        if self.size >= 1 and self.size != int(self.size):
            raise ValueError("size must be a fraction below 1 or a whole number of rows")
        if self.stratify and self.group_by:
            raise ValueError("use either stratify or group_by, not both")
        return self


class DatasetSpec(Strict):
    local_dir: Optional[str] = None  # relative to the data directory
    hub_id: Optional[str] = None
    hub_config: Optional[str] = None
    hub_revision: Optional[str] = None
    format: Optional[Literal["squad"]] = None  # squad: local .json files are official SQuAD files (nested)
    splits: dict[str, SplitSpec]
    derive: dict[str, DeriveSpec] = {}
    # a split to carve out of another one when its own source is not available (e.g. offline, no training file);
    # runs that use a fallback are tagged as not on the official split
    fallback: dict[str, DeriveSpec] = {}
    # roles whose column is named differently in the hub copy (e.g. `en` there, `translation.en` in the local files)
    hub_columns: dict[str, str] = {}

    @model_validator(mode="after")
    def _check(self) -> DatasetSpec:
        if not self.local_dir and not self.hub_id:
            raise ValueError("a dataset needs `local_dir` and/or `hub_id`")
        if "test" not in self.splits and "test" not in self.derive:
            raise ValueError("a dataset must define a `test` split")
        for name, d in self.derive.items():
            if name in self.splits:
                raise ValueError(f"split '{name}' is both listed and derived")
            if d.from_ not in self.splits:
                raise ValueError(f"derived split '{name}' comes from unknown split '{d.from_}'")
        for name, d in self.fallback.items():
            if name not in self.splits:
                raise ValueError(f"fallback for '{name}': only a listed split can have a fallback")
            if d.from_ not in self.splits or d.from_ == name or d.from_ in self.fallback:
                raise ValueError(f"fallback for '{name}' must come from another listed split without a fallback")
        return self


class Reference(Strict):
    """A published number, so a result can be put next to it (always with its source)."""

    metric: str
    value: float
    model: str
    source: str
    note: Optional[str] = None
    # how the number was computed, when that differs from harness (e.g. "ROUGE-1.5.5 (Perl)", "tokenized BLEU")
    implementation: Optional[str] = None
    # where it was measured, when not on this task's test split (e.g. "GLUE test server")
    test_set: Optional[str] = None


class TaskSpec(Strict):
    """A task file. Metrics, main metric, direction and the columns of the family's roles default to the family's
    (harness/families/__init__.py), so a task file states only what is its own; the registry fills them in."""

    name: str
    family: str
    description: str
    dataset: DatasetSpec
    columns: dict[str, str] = {}  # role (e.g. text, label) -> column name in the data; default: the role's name
    labels: Optional[list[str]] = None
    metrics: Optional[list[str]] = None  # default: the family's metrics
    main_metric: Optional[str] = None  # default: the family's main metric
    direction: Optional[Literal["maximize", "minimize"]] = None  # default: the main metric's own direction
    references: list[Reference] = []
    options: dict[str, Any] = {}  # family-specific settings of the task (e.g. the SQuAD version)
    config: dict[str, Any] = {}  # run-config overrides for every profile
    profiles: dict[str, dict[str, Any]] = {}  # run-config overrides per profile
    path: Optional[str] = Field(default=None, exclude=True)

    @model_validator(mode="after")
    def _check(self) -> TaskSpec:
        if self.labels is not None and len(set(self.labels)) != len(self.labels):
            raise ValueError("labels must be unique")
        return self


# --------------------------------------------------------------------------------------------------------------------
# Run config: profiles, task defaults, overrides
# --------------------------------------------------------------------------------------------------------------------

DEFAULT_MODEL = "sentence-transformers/all-MiniLM-L6-v2"
# ROUGE-Lsum's sentences and ROUGE's implementation: one vocabulary for runs, `harness score` and `harness compare`
ROUGE_SPLITS = ("auto", "newline", "none")  # none: another name for newline (each line is a sentence)
ROUGE_ENGINES = ("rouge-score", "pyrouge", "pyrouge-perl")


class ModelConfig(Strict):
    name: str = DEFAULT_MODEL  # hub id, local directory, `runs:/<run_id>` or a Lightning .ckpt file
    revision: Optional[str] = None
    dropout: Optional[float] = Field(default=None, ge=0, lt=1)  # overrides the backbone's hidden dropout
    attn_implementation: Optional[str] = "sdpa"
    # with sdpa on a GPU: the kernels PyTorch may pick (auto: any; one name: only that one, e.g. efficient)
    sdpa_backend: Literal["auto", "flash", "efficient", "cudnn", "math"] = "auto"
    # random weights with the model's (or config_overrides') architecture
    from_scratch: bool = only_for(*LM_FAMILIES, default=False)
    # with from_scratch: e.g. {num_hidden_layers: 4, hidden_size: 256}
    config_overrides: dict[str, Any] = only_for(*LM_FAMILIES, default={})
    # which weights train (harness/models/transfer.py): all, the task head only, LoRA adapters, or prompt tuning
    mode: Literal["full", "frozen", "lora", "prompt_tuning"] = only_for(*TRANSFER_FAMILIES, default="full")
    lora_r: int = only_for(*TRANSFER_FAMILIES, default=8, gt=0)
    lora_alpha: float = only_for(*TRANSFER_FAMILIES, default=16.0, gt=0)
    lora_dropout: float = only_for(*TRANSFER_FAMILIES, default=0.1, ge=0, lt=1)
    lora_targets: Optional[list[str]] = only_for(*TRANSFER_FAMILIES, default=None)  # None: per architecture
    virtual_tokens: int = only_for(*TRANSFER_FAMILIES, default=20, gt=0)  # prompt_tuning
    merge: bool = only_for(*TRANSFER_FAMILIES, default=False)  # lora: log a merged full model, not the adapter

    @model_validator(mode="after")
    def _sdpa(self) -> ModelConfig:
        if self.sdpa_backend != "auto" and self.attn_implementation != "sdpa":
            raise ValueError(
                f"model.sdpa_backend={self.sdpa_backend} picks a kernel of PyTorch's SDPA attention, but "
                f"model.attn_implementation is {self.attn_implementation}; set model.attn_implementation=sdpa"
            )
        return self

    def transfer(self) -> Optional[dict[str, Any]]:
        """What a module needs to train in this mode (None for full fine-tuning, as modules saved before modes)."""
        if self.mode == "full":
            return None
        keys = {"lora": ("lora_r", "lora_alpha", "lora_dropout", "lora_targets"), "prompt_tuning": ("virtual_tokens",)}
        return {"mode": self.mode, "base_ref": self.name, **{k: getattr(self, k) for k in keys.get(self.mode, ())}}


class DataConfig(Strict):
    data_dir: Optional[str] = None  # folder holding the canonical files; HARNESS_DATA_DIR if unset
    # tokens per example (generation families use generation.max_source_length / max_target_length instead)
    max_length: int = only_for("classification", "extractive_qa", *LM_FAMILIES, default=128, ge=8)
    truncation: Literal["head", "tail", "head_tail"] = only_for("classification", default="head")
    # head_tail only; default: a quarter of the budget
    head_tokens: Optional[int] = only_for("classification", default=None, ge=0)
    train_size: Optional[int] = Field(default=None, gt=0)  # stratified subset; None = the whole split
    validation_size: Optional[int] = Field(default=None, gt=0)
    test_size: Optional[int] = Field(default=None, gt=0)
    test_file: Optional[str] = None  # evaluate on this file (task schema) instead of the test split
    batch_size: int = Field(default=16, gt=0)
    eval_batch_size: int = Field(default=64, gt=0)
    # a token budget per batch instead of a count: as many examples as fit in this many padded tokens (then
    # batch_size only sizes the length-sorted pools); eval_max_tokens likewise for evaluation (not generation)
    max_tokens: Optional[int] = Field(default=None, gt=0)
    eval_max_tokens: Optional[int] = Field(default=None, gt=0)
    # each split's token matrices held as tensors on the training device (copied there once) and every batch gathered
    # there by index, instead of padded on the host and copied each step: auto = on a GPU, for the splits that fit
    # (all held together within a fifth of the memory free before them); families that build batches on the host
    # (masking, generation) keep them there
    device_resident: Union[bool, Literal["auto"]] = only_for("classification", "extractive_qa", default="auto")
    bucketing: bool = True  # length-aware batches: shuffled buckets for training, sorted for evaluation
    bucket_multiplier: int = Field(default=50, gt=0)  # pool of batch_size*k examples sorted together
    pad_to_multiple_of: Optional[int] = Field(default=8, gt=0)
    num_workers: int = Field(default=0, ge=0)
    pin_memory: bool = False
    # train on train + validation (no validation split): the final fit after a hyperparameter search
    train_on_validation: bool = False
    # extractive QA: tokens shared by consecutive context windows
    doc_stride: int = only_for("extractive_qa", default=128, ge=0)
    # language modelling: training text concatenated (eos between documents) and cut into max_length blocks
    packing: bool = only_for(*LM_FAMILIES, default=True)
    # masked LM: share of tokens selected (80/10/10)
    mlm_probability: float = only_for("masked_lm", default=0.15, gt=0, lt=1)
    # masked LM: select whole words, not single sub-word tokens
    whole_word_masking: bool = only_for("masked_lm", default=False)
    # masked LM: BERT's next-sentence prediction beside masked tokens (sentence pairs, half of them random)
    nsp: bool = only_for("masked_lm", default=False)


class OptimConfig(Strict):
    lr: float = Field(default=5e-5, gt=0)
    weight_decay: float = Field(default=0.01, ge=0)
    warmup_ratio: float = Field(default=0.1, ge=0, le=1)
    scheduler: Literal["linear", "cosine", "constant"] = "linear"
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = Field(default=1e-8, gt=0)
    # AdamW's fused kernel (one kernel for all parameters; about 6x faster steps on a CPU, fewer launches on a GPU):
    # auto uses it wherever torch has it for the device; the run logs the choice made (true or false)
    fused: Union[bool, Literal["auto"]] = "auto"


# what Lightning accepts for `precision`, plus auto (harness picks one for the hardware)
PRECISIONS = (
    "auto",
    "32-true",
    "bf16-mixed",
    "16-mixed",
    "bf16-true",
    "16-true",
    "64-true",
    "transformer-engine",
    "transformer-engine-float16",
    "32",
    "16",
    "bf16",
    "64",
)


class TrainerConfig(Strict):
    max_epochs: int = Field(default=1, gt=0)
    max_steps: int = -1
    accelerator: Literal["auto", "cpu", "gpu", "cuda", "mps", "tpu"] = "auto"
    devices: Union[int, str] = "auto"  # per node
    num_nodes: int = Field(default=1, gt=0)  # several nodes: under torchrun / srun, or by hand (docs/scale-out.md)
    strategy: str = "auto"  # auto, ddp, fsdp (sharded: harness/models/sharding.py), or another of Lightning's names
    # fsdp only: shard within groups of this many processes and replicate across the groups (HSDP; e.g. the devices of
    # one node); None shards over all
    shard_size: Optional[int] = Field(default=None, gt=0)
    precision: str = "auto"  # auto: bf16-mixed where the hardware supports it natively, else 32-true
    accumulate_grad_batches: int = Field(default=1, gt=0)
    gradient_clip_val: Optional[float] = Field(default=1.0, ge=0)
    val_check_interval: Union[int, float] = 1.0
    log_every_n_steps: int = Field(default=10, gt=0)
    checkpoint_every_n_steps: int = Field(default=50, gt=0)
    deterministic: bool = False
    num_threads: Optional[int] = Field(default=None, gt=0)  # torch intra-op threads on CPU; None = all cores
    # torch.compile the model for training and testing (the first steps of each new shape pay for compiling): true
    # (inductor's default mode) or a mode; reduce-overhead also captures CUDA graphs on a GPU (few shapes help:
    # data.pad_to_multiple_of=64 gives at most 8 lengths up to 512)
    compile: Union[bool, Literal["default", "reduce-overhead", "max-autotune"]] = False

    @field_validator("precision")
    @classmethod
    def _precision(cls, v: str) -> str:
        if v not in PRECISIONS:
            raise ValueError(f"unknown precision; use one of {', '.join(PRECISIONS[:7])}")
        return v


class EvalConfig(Strict):
    bootstrap_resamples: int = Field(default=1000, ge=100)
    confidence: float = Field(default=0.95, gt=0, lt=1)
    ece_bins: int = only_for("classification", default=15, gt=1)
    prediction_text_chars: int = Field(default=200, ge=0)  # text prefix kept in the predictions table
    # summarization: ROUGE-Lsum's sentences; auto splits an output without line breaks, newline (or none, the same)
    # takes the lines as given
    rouge_split: Literal["auto", "newline", "none"] = only_for("summarization", default="auto")
    # summarization: rouge-score (Google's implementation, in Rust), pyrouge (the numbers papers report: ROUGE-1.5.5's
    # tokens and stems in Python, counted by rouge-score-rs; harness/metrics/rouge155.py) or pyrouge-perl (Perl
    # ROUGE-1.5.5 itself as papers ran it through pyrouge; needs perl and its XML::DOM module; minutes)
    rouge_engine: Literal["rouge-score", "pyrouge", "pyrouge-perl"] = only_for("summarization", default="rouge-score")
    # extractive QA post-processing: candidate spans kept per context window, longest answer (tokens), and for
    # SQuAD 2.0 the margin: answer "" when null score - best span score > null_threshold
    n_best: int = only_for("extractive_qa", default=20, gt=0)
    max_answer_length: int = only_for("extractive_qa", default=30, gt=0)
    null_threshold: float = only_for("extractive_qa", default=0.0)


class GenerationConfig(Strict):
    """Generation families (summarization, translation): how inputs are built and how text is generated."""

    # decoder-only models: the prompt before the target; {source} is replaced by the (truncated) source text
    prompt: str = "{source}\n"
    system: Optional[str] = None  # chat models: the system message (None: the chat template's default)
    chat_template: Literal["auto", "never"] = "auto"  # auto: wrap the prompt in the tokenizer's chat template
    source_prefix: str = ""  # encoder-decoder models: text put before the source (e.g. "summarize: " for T5)
    max_source_length: int = Field(default=512, ge=8)  # source tokens kept (truncated from the end)
    max_target_length: int = Field(default=128, ge=1)  # training target tokens kept
    max_new_tokens: int = Field(default=128, ge=1)
    min_new_tokens: int = Field(default=0, ge=0)
    num_beams: int = Field(default=1, ge=1)
    length_penalty: float = 1.0
    no_repeat_ngram_size: int = Field(default=0, ge=0)
    repetition_penalty: float = Field(default=1.0, gt=0)
    early_stopping: bool = True
    batch_size: Optional[int] = Field(default=None, gt=0)  # generation batch; None: data.eval_batch_size

    @model_validator(mode="after")
    def _check(self) -> GenerationConfig:
        if "{source}" not in self.prompt:
            raise ValueError("generation.prompt must contain {source}")
        if self.min_new_tokens > self.max_new_tokens:
            raise ValueError("generation.min_new_tokens is larger than generation.max_new_tokens")
        return self


DEFAULT_TRACKING_URI = "sqlite:///mlruns.db"  # zero-setup: a sqlite file in the working directory


def default_tracking_uri() -> str:
    """$MLFLOW_TRACKING_URI, else the zero-setup sqlite store."""
    return os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI


class TrackingConfig(Strict):
    tracking_uri: Optional[str] = None  # MLFLOW_TRACKING_URI if unset, else DEFAULT_TRACKING_URI
    experiment: Optional[str] = None  # default: the task name
    run_name: Optional[str] = None
    tags: dict[str, str] = {}
    system_metrics: bool = True
    system_metrics_interval: float = Field(default=10.0, gt=0)
    output_dir: str = ".harness"  # checkpoints and resume state
    keep_checkpoints: bool = False  # delete checkpoints once a run has finished

    @property
    def uri(self) -> str:
        return self.tracking_uri or DEFAULT_TRACKING_URI


class RunConfig(Strict):
    task: str
    profile: str = "auto"  # auto: `full` with CUDA, else `quick`
    seed: int = 42
    train: bool = True  # false: evaluate model.name as it is
    log_model: bool = False
    model: ModelConfig = ModelConfig()
    data: DataConfig = DataConfig()
    trainer: TrainerConfig = TrainerConfig()
    optim: OptimConfig = OptimConfig()
    eval: EvalConfig = EvalConfig()
    generation: GenerationConfig = only_for(*GENERATION_FAMILIES, default=GenerationConfig())
    tracking: TrackingConfig = TrackingConfig()

    @field_validator("profile")
    @classmethod
    def _profile_name(cls, v: str) -> str:
        if not v.replace("_", "").replace("-", "").isalnum():
            raise ValueError("a profile name is letters, digits, '-' and '_'")
        return v

    def resolved(self, family: Optional[str] = None) -> dict[str, Any]:
        """The config as plain data, without the fields that do not apply to `family` and with the tracking URI's
        password masked: what `harness config` prints and a run logs."""
        data = self.model_dump(mode="json")
        if family is not None:
            _prune(data, type(self), family)
        data["tracking"]["tracking_uri"] = redact_uri(self.tracking.uri)
        return data

    def identity_hash(self) -> str:
        """Hash of everything that determines the result; the same command gives the same hash (used to resume)."""
        d = self.model_dump(mode="json")
        d["tracking"] = {k: v for k, v in d["tracking"].items() if k in ("experiment", "tracking_uri")}
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


# --------------------------------------------------------------------------------------------------------------------
# Loading, merging, checking
# --------------------------------------------------------------------------------------------------------------------


def load_yaml(path: Path) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f)
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({e.__class__.__name__}: {e})", "fix the YAML syntax") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of keys at the top level, got {type(data).__name__}")
    return data


_SCIENTIFIC = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


def parse_override(item: str) -> tuple[str, Any]:
    """`trainer.max_epochs=2` -> ("trainer.max_epochs", 2). Values are read as YAML scalars (numbers, booleans,
    null, lists), and stay strings otherwise."""
    if "=" not in item:
        raise ConfigError(f"override '{item}' is not of the form key=value", "write e.g. trainer.max_epochs=2")
    key, raw = item.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override '{item}' has an empty key", "write e.g. trainer.max_epochs=2")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    if isinstance(value, dict):
        value = raw  # `{...}` stays literal text; nested keys are set with dots
    elif isinstance(value, str) and _SCIENTIFIC.fullmatch(value.strip()):
        value = float(value)  # YAML 1.1 reads 1e-4 as text; users mean a number
    return key, value


def set_dotted(d: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    cur = d
    for p in parts[:-1]:
        nxt = cur.get(p)
        if not isinstance(nxt, dict):
            nxt = {}
            cur[p] = nxt
        cur = nxt
    cur[parts[-1]] = value


def deep_merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in top.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = v
    return out


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def _section_model(model: type[BaseModel], key: str) -> Optional[type[BaseModel]]:
    field = model.model_fields.get(key)
    if field is None:
        return None
    ann = field.annotation
    if isinstance(ann, type) and issubclass(ann, BaseModel):
        return ann
    return None


def _prune(d: dict[str, Any], model: type[BaseModel], family: str) -> None:
    for name, field in model.model_fields.items():
        if name not in d:
            continue
        if not applies(field, family):
            del d[name]
            continue
        sub = _section_model(model, name)
        if sub is not None and isinstance(d[name], dict):
            _prune(d[name], sub, family)


def check_keys(d: dict[str, Any], model: type[BaseModel], source: str, prefix: str = "") -> None:
    """Reject keys the schema does not know, naming the source and listing the keys that are allowed."""
    for key, value in d.items():
        dotted = f"{prefix}{key}"
        if key not in model.model_fields:
            aliases = {f.alias for f in model.model_fields.values() if f.alias}
            if key in aliases:
                continue
            allowed = ", ".join(sorted(model.model_fields))
            where = f"'{prefix[:-1]}'" if prefix else "the top level"
            raise ConfigError(
                f"{source}: unknown config key '{dotted}'",
                f"allowed keys at {where}: {allowed}",
            )
        sub = _section_model(model, key)
        if sub is not None:
            if not isinstance(value, dict):
                raise ConfigError(
                    f"{source}: '{dotted}' is a section, not a value",
                    f"set one of its keys instead, e.g. {dotted}.{next(iter(sub.model_fields))}=...",
                )
            check_keys(value, sub, source, prefix=f"{dotted}.")


def error_text(err: Any) -> str:
    """A pydantic error's message in our words: without pydantic's "Value error, " / "Assertion failed, " prefix."""
    msg = str(err["msg"])
    for prefix in ("Value error, ", "Assertion failed, "):
        msg = msg.removeprefix(prefix)
    return msg


def _describe_error(err: dict[str, Any]) -> tuple[str, str]:
    loc = ".".join(str(p) for p in err["loc"])
    msg = error_text(err)
    if "input" in err and err["type"] not in ("missing",) and not isinstance(err["input"], dict):
        return loc, f"bad value {err['input']!r} for '{loc}': {msg}"  # (a whole section is not quoted back)
    return loc, f"'{loc}': {msg}"


def _user_key(loc: tuple, model: Any) -> tuple[str, Any]:
    """The key as the user wrote it (pydantic adds the branch of a union to an error's location, e.g.
    `data.device_resident.bool`), and the field it names (None when the location is not a field)."""
    parts, field = [], None
    for part in loc:
        fields = getattr(model, "model_fields", None)
        if not isinstance(part, str) or not fields or part not in fields:
            break
        parts.append(part)
        field = fields[part]
        model = field.annotation
        args = [a for a in typing.get_args(model) if isinstance(a, type) and issubclass(a, BaseModel)]
        model = args[0] if args else model
    return ".".join(parts), field


def allowed_values(annotation: Any) -> list[str]:
    """The words and values a setting takes, as a user writes them (`true, false, auto`), or [] for open types.

    >>> allowed_values(Union[bool, Literal["auto"]])
    ['true', 'false', 'auto']
    >>> allowed_values(Literal["linear", "cosine"])
    ['linear', 'cosine']
    """
    words: list[str] = []
    if typing.get_origin(annotation) is Literal:
        return [str(a) for a in typing.get_args(annotation)]
    for arg in typing.get_args(annotation):
        if typing.get_origin(arg) is Literal:
            words += [str(a) for a in typing.get_args(arg)]
        elif arg is bool:
            words += ["true", "false"]
        elif arg is type(None):
            words.append("null")
        else:
            return []  # a number or a string besides: no closed list
    return words


def validation_to_error(e: ValidationError, origins: dict[str, str], what: str, model: Any = None) -> ConfigError:
    err = e.errors()[0]
    loc, text = _describe_error(err)
    key, field = _user_key(err["loc"], model or RunConfig)
    words = allowed_values(field.annotation) if field is not None else []
    if key and words and key != loc:  # a union's branch in pydantic's words: say the key and what it takes
        loc = key
        text = f"bad value {err.get('input')!r} for '{key}': use one of {', '.join(words)}"
    elif key and words and "input" in err:
        text = f"bad value {err['input']!r} for '{key}': use one of {', '.join(words)}"
    src = origins.get(loc)
    if src is None:  # an error on a section names the section; name where its keys were set, latest layer first
        inside = [s for k, s in origins.items() if k.startswith(loc + ".")]
        given = [s for s in inside if s.startswith("override ")]
        src = given[-1] if given else (inside[-1] if inside else what)
    return ConfigError(f"{src}: {text}", "fix that value (see docs/configuration.md)")


def load_profile(name: str) -> dict[str, Any]:
    from harness.paths import profiles_dir

    path = profiles_dir() / f"{name}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in profiles_dir().glob("*.yaml"))
        raise ConfigError(f"unknown profile '{name}'", f"use one of: {', '.join(known)} (files in configs/profiles/)")
    data = load_yaml(path)
    check_keys(data, RunConfig, str(path))
    return data


def gpu_device_files() -> bool:
    """Whether this machine shows a GPU driver at all (NVIDIA or ROCm device files), asked without importing torch
    (4 s): on a machine without one, torch cannot see a CUDA device either."""
    if os.environ.get("CUDA_VISIBLE_DEVICES", None) in ("", "-1"):
        return False
    return any(os.path.exists(p) for p in ("/dev/nvidia0", "/dev/nvidiactl", "/proc/driver/nvidia", "/dev/kfd"))


def default_profile() -> str:
    if not gpu_device_files():  # the light commands (config, check, validate) start without torch here
        return "quick"
    try:
        import torch

        # the choice only; a CPU test forces profile=full (tests/test_config.py) and the GPU check runs it here
        return "full" if torch.cuda.is_available() else "quick"
    except ImportError:  # pragma: no cover - torch is a dependency
        return "quick"


def resolve_run_config(task: TaskSpec, overrides: list[str] | None = None) -> RunConfig:
    """Build the run config for `task` from the layers described in the module docstring."""
    cli: dict[str, Any] = {}
    cli_keys: dict[str, str] = {}
    for item in overrides or []:
        key, value = parse_override(item)
        set_dotted(cli, key, value)
        cli_keys[key] = f"override '{item}'"
    # Each override is checked alone so the error can quote it.
    for key, src in cli_keys.items():
        one: dict[str, Any] = {}
        set_dotted(one, key, None)
        check_keys(one, RunConfig, src)

    profile = cli.get("profile") or "auto"
    if profile == "auto":
        profile = default_profile()

    layers: list[tuple[str, dict[str, Any]]] = [
        (f"configs/profiles/{profile}.yaml", load_profile(profile)),
        (f"{task.path or task.name}: config", task.config),
        (f"{task.path or task.name}: profiles.{profile}", task.profiles.get(profile, {})),
    ]
    env: dict[str, Any] = {}
    if os.environ.get("HARNESS_DATA_DIR"):
        set_dotted(env, "data.data_dir", os.environ["HARNESS_DATA_DIR"])
    if os.environ.get("MLFLOW_TRACKING_URI"):
        set_dotted(env, "tracking.tracking_uri", os.environ["MLFLOW_TRACKING_URI"])
    layers.append(("environment", env))
    layers.append(("command line", cli))

    merged: dict[str, Any] = {"task": task.name}
    origins: dict[str, str] = {}
    for source, layer in layers:
        check_keys(layer, RunConfig, source)
        merged = deep_merge(merged, layer)
        for k in flatten(layer):
            origins[k] = cli_keys.get(k, source)
    merged["task"] = task.name
    merged["profile"] = profile
    try:
        cfg = RunConfig.model_validate(merged)
    except ValidationError as e:
        raise validation_to_error(e, origins, "config") from None
    if cfg.data.device_resident is True and not applies(DataConfig.model_fields["device_resident"], task.family):
        raise device_resident_refused(task.family, origins.get("data.device_resident", "config"))
    if cfg.tracking.tracking_uri is None:
        cfg.tracking.tracking_uri = DEFAULT_TRACKING_URI
    return cfg


def device_resident_refused(family: str, origin: str) -> ConfigError:
    """`data.device_resident=true` for a family whose batches are drawn or built on the host."""
    return ConfigError(
        f"data.device_resident=true ({origin}): the {family} family builds its batches on the host (random masking, "
        "generation), so they cannot be gathered on the device; set data.device_resident=auto or false"
    )


def redact_uri(uri: str) -> str:
    """A URI without its password, for logs and screens: postgresql://u:secret@h/db -> postgresql://u:***@h/db."""
    if "://" in uri and "@" in uri.split("://", 1)[1]:
        scheme, rest = uri.split("://", 1)
        cred, host = rest.rsplit("@", 1)
        if ":" in cred:
            return f"{scheme}://{cred.split(':', 1)[0]}:***@{host}"
    return uri


def dump_yaml(data: Any) -> str:
    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True)
