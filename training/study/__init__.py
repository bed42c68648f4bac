"""`python -m training.study`: how good is a DMR-IR model once patients never cross a split?

One module per step, read in this order:

- `cohort`: one picture per patient, its label and era (ID < 300 or not);
- `variants`: the pipeline's render and the preprocessing/region variants of the checks;
- `features`: frozen EfficientNet-Lite0 features (ImageNet, and the random-init control);
- `probe`: the logistic-regression probe (scikit-learn), its nested choice of feature set and
  penalty by inner `StratifiedGroupKFold` CV, Platt scaling and the operating threshold;
- `cv`: outer cross-validation by patient, pooled out-of-fold metrics with patient-bootstrap
  intervals, the spread over split seeds;
- `cnn`: CNNs trained end to end inside the same outer folds;
- `shortcuts`: the era probe, the ID < 300-only probe, the rendering/region checks;
- `ship`: the shipped probe as one ONNX graph, and scoring any folder with a model;
- `tables`: the markdown tables the model card quotes;
- `run` and `cli`: the study from start to end, and its command line.

Thermography is an adjunct to mammography only; nothing here is a diagnosis.
"""
