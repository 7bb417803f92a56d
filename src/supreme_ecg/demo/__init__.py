"""The embedded offline demo: a synthetic ECG generator and a miniature of the four real datasets.

``synth`` renders 12-lead ECGs from physiological knobs; ``corpus`` writes MIMIC-IV-ECG, PTB-XL,
CPSC2018 and CSN look-alikes in their real PhysioNet layouts, so the real loaders read the demo.
"""
