"""``llmfair sweep``: methods × imbalance ratios × folds × seeds (× K clusters) on cached features.

The IDI / EMO-Debias experiments (METHODS.md §1.6, §2, §5.1) train a frozen-feature head once per
(method, gender-imbalance ratio, fold, seed) and report mean figures per method. This package runs
that grid resumably and collects the IDI table:

- :class:`SweepConfig` (YAML): the corpus (``crema_d``: the EMO-SUPERB label files), the features
  (a safetensors file keyed by an ids list, or an extractor over an audio directory through the
  feature cache), the inferred groups (``groups_file``, or ``infer_groups`` to infer them in the
  sweep), the raters' labels (``ratings_file``), the methods, ratios, folds, seeds and the recipe;
- :func:`plan_runs` expands the grid in a fixed order; every run has a stable id
  ``<method>-r<ratio>-f<fold>-s<seed>[-k<K>]``;
- :func:`run_sweep` runs a shard of the grid. Per run: the imbalanced train/dev of
  :func:`llmfair.data.imbalance.build_imbalanced_splits` (ratio, seed), the head trained by
  :func:`llmfair.ssl.train_head.train_head` with the method's objective / sampler / groups, and
  predictions on the **untouched** test split. It writes ``runs/predictions_<id>.csv``
  (multi-label table: ``label_<class>`` soft labels, ``prob_<class>``) and then
  ``runs/metrics_<id>.json`` (written last, atomically). A run whose two files exist is skipped,
  so an interrupted sweep resumes where it stopped; ``shard=(i, n)`` runs every n-th run from i,
  so n processes split a grid without overlap. With a ``ratings_file`` every run also writes
  ``runs/rater_predictions_<id>.csv`` (the test predictions once per rater annotation) and its
  metrics gain the rater side (:mod:`~llmfair.sweep.raters`);
- :func:`collect_results` writes ``results.csv`` / ``results.md`` in the IDI format — mean ± sample
  std over folds × seeds per method × supervision × ratio, then per supervision level an
  ``Overall`` row (the mean of the DS, RW, GDRO and GADRO rows present, METHODS.md §3 and the §5.1
  note on v1's inconsistent Overall rows) and a ``Gain`` row (:func:`llmfair.metrics.gain` of the
  Overall means against ERM's) — and plots (TPR gap vs ratio per method, F1 vs TPR gap) — and the
  fairness–accuracy front of the runs, ``front.csv`` / ``front.png`` (:mod:`llmfair.report.front`,
  one panel per ratio; figures with speaker-bootstrap intervals from :func:`front_figures`).
  With rater-side figures results.csv gains ``rater_dp_gap_sum_*`` / ``rater_dp_gap_rms_*`` and
  results.md a ``DPgap_rat`` column (:data:`RATER_METRICS`).

Modules, in the order a run flows through them: :mod:`~llmfair.sweep.config` (the YAML),
:mod:`~llmfair.sweep.plan` (the grid, shards, run files), :mod:`~llmfair.sweep.inputs` (features,
inferred groups, cached splits), :mod:`~llmfair.sweep.raters` (the ratings file, per-rater training
rows, the rater side of every run), :mod:`~llmfair.sweep.execute` (one run, a shard of runs),
:mod:`~llmfair.sweep.results` (results.csv / results.md / front); the plots live in
:mod:`llmfair.report.sweep_plots`. The public names of all six are re-exported here.

The YAML schema (:class:`SweepConfig`; every key is checked at load time, errors name the file and
the section; the fields' ``help`` metadata describes each key and its default)::

    corpus: crema_d
    labels_dir: DIR                  # labels_consensus_{1..5}.csv (+ config.json)
    features: {path: FILE.safetensors, tensor: features, ids: FILE.ids.json}
          # or {extractor: acoustic|speaker|ssl, extractor_options: {...}, audio_dir: DIR, cache_dir: DIR}
    groups_file: FILE.csv            # inferred groups, for groups: pseudo / clusters ...
    infer_groups: {...}              # ... or let the sweep infer them (GroupSource keys, below)
    ratings_file: FILE.csv           # raters' labels, for groups: rater and the rater-side figures
    methods:                         # MethodSpec: name, objective, options, sampler, sampler_options,
      - {name: erm, objective: erm}  #   groups, K, family, supervision
      - {name: two_sided, objective: two_sided, groups: rater}
    ratios: [1, 5, 10, 20, 40]
    folds: [1, 2, 3, 4, 5]
    seeds: [0]
    epochs / batch / lr / weight_decay / max_grad_norm / head / selection / threads
    reference: erm                   # the Gain rows' reference
    overall: [ds, rw, gdro, gadro]   # the families averaged into Overall
    out: DIR                         # the command line's --out wins

Recipes: ``recipes/sweeps/idi_builtin.yaml`` (``infer_groups``), ``recipes/sweeps/idi_crema_d.yaml``,
``recipes/sweeps/two_sided_builtin.yaml`` (``ratings_file``, ``groups: rater``).

Figures per run (METHODS.md §3): F1 = multi-label macro F1, ACC = Hamming accuracy (both after
binarising at > 1/K), ``tpr_gap_rms``, ``dp_gap_sum`` (IDI Eq. 4 literally), ``dp_gap_rms``,
``fpr_gap_rms``, ``f1_gap_rms`` and the number of classes skipped for lack of positives. Fairness
is always measured on the *true* gender of the test speakers, whatever groups a method trained on.

Groups a method trains on (``groups``): ``gender`` (true gender, ●), ``class_gender`` (true gender,
with the objective's / sampler's class × gender grouping, ●), ``pseudo`` (pseudo gender, ⦿),
``clusters`` (k-means cluster ids for each K of the method, ○) and ``rater`` (speaker gender × rater
gender on one row per rater annotation, ●). An objective that needs an attribute its groups lack
(``two_sided`` reads ``rater_gender``) is refused at load time.

- **Inferred groups** (``pseudo``, ``clusters``) come from a precomputed CSV (``groups_file``):
  column ``id``, ``pseudo_gender`` (female/male), optionally ``pseudo_p_female`` and
  ``pseudo_p_male`` (soft memberships for PGDRO), and ``cluster_<K>`` (integer cluster ids
  0..K−1) — only training rows need them. Or **``infer_groups``** (:class:`GroupSource`: the keys of
  :class:`llmfair.groups.GroupInferenceOptions` — ``methods``, ``K``, ``pseudo_model``,
  ``pseudo_folds``, ``seed``, ``tsne`` —
  plus ``features``, a features directory of speaker embeddings, ``extractor`` /
  ``extractor_options`` / ``audio_dir`` to extract them there first when it holds none, and
  ``batch_size`` / ``chunk_size``): the sweep writes the groups file itself into
  ``<features>/groups-<hash>/groups.csv`` (:func:`build_inferred_groups`; the hash covers the
  options, so changed options never reuse another's groups, and finished runs trained on other
  groups are refused) and checks it before any run (:func:`check_group_table`: every K, the pseudo
  labels, a row for every training utterance of the grid). ``methods`` and ``K`` default to what
  the methods train on; give ``groups_file`` or ``infer_groups``, not both.
- **``ratings_file``** (:mod:`~llmfair.sweep.raters`): a CSV ``id, rater, rater_gender, emotion``,
  one row per annotation (``id`` = the utterance id the features are keyed by, the CREMA-D file name
  without ``.wav``; ``emotion`` a CREMA-D class). A method with ``groups: rater`` trains on one row
  per annotation of its training utterances (the rater's label, one-vote soft label; dev and test
  stay per utterance); every run of the sweep gets the rater-side figures ``rater_dp_gap_sum`` /
  ``rater_dp_gap_rms`` and per-class ``delta_sp_spk`` / ``delta_sp_rat``. The built-in corpus's
  CREMA-D layout writes one (``llmfair data synth --crema-d-layout DIR`` → ``DIR/ratings.csv``).

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
    GroupSource,
    MethodSpec,
    SweepConfig,
)
from llmfair.sweep.execute import BATCHED_ENV, SweepSummary, execute_run, execute_runs, run_metrics, run_sweep
from llmfair.sweep.inputs import (
    FeatureTable,
    GroupTable,
    SweepInputs,
    TrainingGroups,
    build_inferred_groups,
    check_group_table,
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
from llmfair.sweep.raters import (
    ONE_VOTE_FLOOR,
    RATER_FIGURES,
    RATER_PREDICTIONS_PREFIX,
    RATINGS_COLUMNS,
    PerRaterTraining,
    RatingsTable,
    cached_ratings,
    load_ratings_file,
    one_vote_labels,
    per_rater_training,
    rater_predictions_path,
    rater_side_figures,
    rater_side_table,
)
from llmfair.sweep.results import (
    FRONT_RESAMPLES,
    METRICS,
    RATER_METRICS,
    TABLE_COLUMNS,
    collect_results,
    front_figures,
    front_rows,
    read_run_records,
    results_frame,
    results_markdown,
)

__all__ = [
    "BATCHED_ENV", "CORPORA", "DEFAULT_SUPERVISION", "FRONT_RESAMPLES", "GROUP_SOURCES", "METRICS", "ONE_VOTE_FLOOR",
    "OVERALL_FAMILIES", "RATER_FIGURES", "RATER_METRICS", "RATER_PREDICTIONS_PREFIX", "RATINGS_COLUMNS", "RUNS_DIR",
    "SUPERVISION_LEVELS", "TABLE_COLUMNS", "FeatureSource", "FeatureTable", "GroupSource", "GroupTable", "MethodSpec",
    "PerRaterTraining", "RatingsTable", "RunSpec", "SweepConfig", "SweepInputs", "SweepSummary", "TrainingGroups",
    "build_inferred_groups", "cached_ratings", "check_group_table", "check_shard", "collect_results", "execute_run", "execute_runs",
    "front_figures", "front_rows", "is_finished", "load_feature_file", "load_group_table", "load_ratings_file",
    "metrics_path", "one_vote_labels", "parse_shard", "per_rater_training", "plan_runs", "predictions_path",
    "rater_predictions_path", "rater_side_figures", "rater_side_table", "read_run_records", "results_frame",
    "results_markdown", "run_metrics", "run_sweep", "train_head", "training_groups",
]
