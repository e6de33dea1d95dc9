"""The simulator: a generative model of hourly migraine diaries with known truth, and its exact references
(Kalman posterior, Bayes forecast, the value of each question). ``python -m aline.simulate`` writes it out."""
