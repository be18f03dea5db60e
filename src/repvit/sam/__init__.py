"""RepViT-SAM: Segment Anything with a RepViT-M2.3 image encoder ("RepViT-SAM: Towards Real-Time
Segmenting Anything", arXiv 2312.05760), on Meta's ``segment-anything`` package
(``pip install 'repvit-toolkit[sam]'``): its prompt encoder, mask decoder, ``SamPredictor`` and
``SamAutomaticMaskGenerator`` work with the model :func:`create_sam` returns.

:mod:`.model` (the encoder, the model, reading the official and our own checkpoints),
:mod:`.predict` (prompted and automatic segmentation, written as PNG/JSON), :mod:`.export` (the
fused encoder and the prompt decoder in each runtime), :mod:`.teacher` (SAM ViT teachers and the
cache of their embeddings) and :mod:`.distill` (``repvit sam distill``, a task of the dense loop)."""

from .model import (
    SAM_WEIGHTS,
    RepViTSamEncoder,
    create_sam,
    random_sam,
    read_sam_state,
    sam_encoder_spec,
    sam_input,
    sam_neck,
    save_sam,
)

__all__ = ["create_sam", "random_sam", "RepViTSamEncoder", "sam_encoder_spec", "sam_neck", "read_sam_state",
           "save_sam", "sam_input", "SAM_WEIGHTS"]
