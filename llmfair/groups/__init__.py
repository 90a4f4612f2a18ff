"""Group inference: groups for the debiasing objectives when true demographics are unavailable.

Implicit demography inference (IDI; Lin, Chou & Lee, Interspeech 2025) in
:mod:`llmfair.groups.inference`: pseudo gender labels from a pluggable classifier, k-means clusters
of speaker embeddings, their purity against the true gender, the t-SNE figure, and the GroupSpec
plus group ids the objectives consume.
"""
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
    tsne_plot,
)

__all__ = [
    "CLUSTER_COUNTS", "KMEANS_PARAMETERS", "PSEUDO_GENDERS", "TSNE_PARAMETERS", "ClusterPurity",
    "EmbeddingGenderClassifier", "KMeansClusters", "PseudoGenderLabeler", "PseudoGenderLabels",
    "TransformersGenderLabeler", "cluster_groups", "cluster_names", "cluster_purity", "fit_kmeans",
    "gender_label_indices", "pseudo_gender_groups", "tsne_plot",
]
