"""Rotation prediction pretext task (Gidaris et al. 2018), as a plugin.

Written only against jigsawkit's public API, as an example of a pretext task that lives
outside the core. Each image (resized to ``image_size``) is rotated by ``k * 90`` degrees,
``k`` drawn per sample; the backbone's features go through a head that predicts ``k``.
Each rotated image is normalised per image and channel (zero mean, unit variance), and the
task declares it (``input_normalization = "per_image"``): the exported feature extractor
records it and the probes feed the same by default, so the backbone's BatchNorm statistics
fit the probe's inputs as well as the random-init baseline's re-estimated ones do. (Fed
raw ``[0, 1]`` images, as it once was, its statistics were wrong at probe time and the gain
biased down.) The synthetic data has an upright orientation to learn (light from above,
contact shadows, objects standing upright; docs/datasets.md).

Registration and schema are here, the task class in ``_rotation_task.py`` beside it: a
lazy ``target`` (docs/plugins.md, "A component class at module level").

Use it with ``--plugins plugins/`` (or ``plugins: [../plugins]`` in an experiment) and::

    pretext: {name: rotation, image_size: 64}
"""

from __future__ import annotations

from jigsawkit import register_pretext

ROTATION_SCHEMA = {
    "properties": {
        "image_size": {
            "type": "integer",
            "minimum": 8,
            "default": 64,
            "description": "side of the (whole) images that are rotated",
        },
        "head_hidden": {
            "type": "integer",
            "minimum": 0,
            "default": 0,
            "description": "hidden units of the head; 0 for a linear head",
        },
    }
}


# The class lives at module level in plugins/_rotation_task.py (the loader skips files whose
# name starts with "_"), named relative to this plugin's folder: registering imports
# nothing of it, building the task imports it (and torch).
register_pretext(
    "rotation",
    schema=ROTATION_SCHEMA,
    target="._rotation_task:RotationTask",
    description="Rotation prediction: which of 0/90/180/270 degrees was the image turned by.",
)
