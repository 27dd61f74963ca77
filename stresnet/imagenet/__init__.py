"""Real ImageNet-1k bases and their 1000-way evaluation on the ImageNet validation images inside Imagenette.

``weights``: checkpoints from packages outside timm's hub, made safe timm checkpoints; ``split``: the
``ILSVRC2012_val_*`` images with their 1000-way labels (the set every calibration and training split excludes);
``evaluate``: top-1 / top-5 of a model on them with its timm pretrained cfg transform."""
