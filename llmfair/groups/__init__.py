"""Group inference: groups for the debiasing objectives when true demographics are unavailable.

Implicit demography inference (IDI; Lin, Chou & Lee, Interspeech 2025) in
:mod:`llmfair.groups.inference`: pseudo gender labels from a pluggable classifier, k-means clusters
of speaker embeddings, their purity against the true gender, the t-SNE figure, and the GroupSpec
plus group ids the objectives consume. :mod:`llmfair.groups.infer` writes the groups file a sweep
reads (``llmfair groups infer``) from a features directory, with purity per K and the t-SNE figure.
"""
from llmfair.groups.infer import (
    GROUP_METHODS,
    GroupInferenceOptions,
    GroupInferenceResult,
    crossfit_pseudo_labels,
    infer_groups,
    speaker_folds,
)
from llmfair.groups.inference import (
    CLUSTER_COUNTS,
    KMEANS_PARAMETERS,
    PSEUDO_GENDERS,
    TSNE_PARAMETERS,
    ClusterPurity,
    EmbeddingGenderClassifier,
    KMeansClusters,
    PseudoGenderLabeler,
    PseudoGenderLabels,
    TransformersGenderLabeler,
    cluster_groups,
    cluster_names,
    cluster_purity,
    fit_kmeans,
    gender_label_indices,
    pseudo_gender_groups,
    scatter_panels,
    tsne_embedding,
    tsne_plot,
)

__all__ = [
    "CLUSTER_COUNTS", "GROUP_METHODS", "KMEANS_PARAMETERS", "PSEUDO_GENDERS", "TSNE_PARAMETERS", "ClusterPurity",
    "EmbeddingGenderClassifier", "GroupInferenceOptions", "GroupInferenceResult", "KMeansClusters",
    "PseudoGenderLabeler", "PseudoGenderLabels", "TransformersGenderLabeler", "cluster_groups", "cluster_names",
    "cluster_purity", "crossfit_pseudo_labels", "fit_kmeans", "gender_label_indices", "infer_groups",
    "pseudo_gender_groups", "scatter_panels", "speaker_folds", "tsne_embedding", "tsne_plot",
]
