"""Dataset readers and preprocessing (thesis §4.1): what data.py builds its datasets from.

  mammograms  DICOM and image files, the mammogram preprocessing and augmentation
  cbis, mias, folders, voc, synthetic   one reader per kind of download (or generated images)
  items       how a dataset serves items: normalisation, patches, the preprocessing cache
  splits      splits by patient and cross-validation folds;  sampling  seeded training streams
  patches     where a training patch is cut: near a lesion, or in the breast
  atomic      atomic file writes, shared with engine/

Imports nothing of the project but model.py's normalisation (items.py): not data.py, not engine/.
"""
