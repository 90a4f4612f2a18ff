"""``llmfair sweep``: methods × imbalance ratios × folds × seeds (× K clusters) on cached features.

The IDI / EMO-Debias experiments (METHODS.md §1.6, §2, §5.1) train a frozen-feature head once per
(method, gender-imbalance ratio, fold, seed) and report mean figures per method. This package runs
that grid resumably and collects the IDI table:

- :class:`SweepConfig` (YAML): the corpus (``crema_d``: the EMO-SUPERB label files), the features
  (a safetensors file keyed by an ids list, or an extractor over an audio directory through the
  feature cache), optional inferred groups, the methods, ratios, folds, seeds and the recipe;
- :func:`plan_runs` expands the grid in a fixed order; every run has a stable id
  ``<method>-r<ratio>-f<fold>-s<seed>[-k<K>]``;
- :func:`run_sweep` runs a shard of the grid. Per run: the imbalanced train/dev of
  :func:`llmfair.data.imbalance.build_imbalanced_splits` (ratio, seed), the head trained by
  :func:`llmfair.ssl.train_head.train_head` with the method's objective / sampler / groups, and
  predictions on the **untouched** test split. It writes ``runs/predictions_<id>.csv``
  (multi-label table: ``label_<class>`` soft labels, ``prob_<class>``) and then
  ``runs/metrics_<id>.json`` (written last, atomically). A run whose two files exist is skipped,
  so an interrupted sweep resumes where it stopped; ``shard=(i, n)`` runs every n-th run from i,
  so n processes split a grid without overlap;
- :func:`collect_results` writes ``results.csv`` / ``results.md`` in the IDI format — mean ± sample
  std over folds × seeds per method × supervision × ratio, then per supervision level an
  ``Overall`` row (the mean of the DS, RW, GDRO and GADRO rows present, METHODS.md §3 and the §5.1
  note on v1's inconsistent Overall rows) and a ``Gain`` row (:func:`llmfair.metrics.gain` of the
  Overall means against ERM's) — and plots (TPR gap vs ratio per method, F1 vs TPR gap) — and the
  fairness–accuracy front of the runs, ``front.csv`` / ``front.png`` (:mod:`llmfair.report.front`,
  one panel per ratio; figures with speaker-bootstrap intervals from :func:`front_figures`).

Modules, in the order a run flows through them: :mod:`~llmfair.sweep.config` (the YAML),
:mod:`~llmfair.sweep.plan` (the grid, shards, run files), :mod:`~llmfair.sweep.inputs` (features,
inferred groups, cached splits), :mod:`~llmfair.sweep.execute` (one run, a shard of runs),
:mod:`~llmfair.sweep.results` (results.csv / results.md / front); the plots live in
:mod:`llmfair.report.sweep_plots`. The public names of all five are re-exported here.

Figures per run (METHODS.md §3): F1 = multi-label macro F1, ACC = Hamming accuracy (both after
binarising at > 1/K), ``tpr_gap_rms``, ``dp_gap_sum`` (IDI Eq. 4 literally), ``dp_gap_rms``,
``fpr_gap_rms``, ``f1_gap_rms`` and the number of classes skipped for lack of positives. Fairness
is always measured on the *true* gender of the test speakers, whatever groups a method trained on.

Groups a method trains on (``groups``): ``gender`` (true gender, ●), ``class_gender`` (true gender,
with the objective's / sampler's class × gender grouping, ●), ``pseudo`` (pseudo gender, ⦿) and
``clusters`` (k-means cluster ids for each K of the method, ○). Inferred groups come from a
precomputed CSV (``groups_file``): column ``id``, ``pseudo_gender`` (female/male), optionally
``pseudo_p_female`` and ``pseudo_p_male`` (soft memberships for PGDRO), and ``cluster_<K>``
(integer cluster ids 0..K−1) — only training rows need them.

Relative paths in the YAML are taken relative to the current directory, as in run recipes.

``train_head`` is re-exported too: every run trains through ``llmfair.sweep.train_head``, so that
name is the one to replace to observe or intercept the training.
"""
from llmfair.ssl.train_head import train_head
from llmfair.sweep.config import (
    CORPORA,
    DEFAULT_SUPERVISION,
    GROUP_SOURCES,
    OVERALL_FAMILIES,
    SUPERVISION_LEVELS,
    FeatureSource,
    MethodSpec,
    SweepConfig,
)
from llmfair.sweep.execute import SweepSummary, execute_run, run_metrics, run_sweep
from llmfair.sweep.inputs import (
    FeatureTable,
    GroupTable,
    SweepInputs,
    TrainingGroups,
    load_feature_file,
    load_group_table,
    training_groups,
)
from llmfair.sweep.plan import (
    RUNS_DIR,
    RunSpec,
    check_shard,
    is_finished,
    metrics_path,
    parse_shard,
    plan_runs,
    predictions_path,
)
from llmfair.sweep.results import (
    FRONT_RESAMPLES,
    METRICS,
    TABLE_COLUMNS,
    collect_results,
    front_figures,
    front_rows,
    read_run_records,
    results_frame,
    results_markdown,
)

__all__ = [
    "CORPORA", "DEFAULT_SUPERVISION", "FRONT_RESAMPLES", "GROUP_SOURCES", "METRICS", "OVERALL_FAMILIES", "RUNS_DIR",
    "SUPERVISION_LEVELS", "TABLE_COLUMNS", "FeatureSource", "FeatureTable", "GroupTable", "MethodSpec", "RunSpec",
    "SweepConfig", "SweepInputs", "SweepSummary", "TrainingGroups", "check_shard", "collect_results", "execute_run",
    "front_figures", "front_rows", "is_finished", "load_feature_file", "load_group_table", "metrics_path",
    "parse_shard", "plan_runs", "predictions_path", "read_run_records", "results_frame", "results_markdown",
    "run_metrics", "run_sweep", "train_head", "training_groups",
]
