"""Metrics of the indicators service (vector density 病媒生物密度, satisfaction 群众满意率)."""
from prometheus_client import Counter, Gauge

DENSITY_READINGS = Counter("chuangwei_vector_readings_total", "Vector density readings recorded")
VERDICTS_PUBLISHED = Counter("chuangwei_vector_verdicts_published_total",
                             "Area vector density verdicts published (changes)", ["verdict"])
VERDICT_AREAS = Gauge("chuangwei_vector_areas", "Area-months by their current vector density verdict", ["verdict"])
VECTOR_SLIPS = Counter("chuangwei_vector_slips_total", "Areas that passed the vector density rule and now fail it")
SURVEY_ANSWERS = Counter("chuangwei_survey_answers_total", "Survey responses recorded", ["channel"])
PUBLIC_REFUSED = Counter("chuangwei_survey_public_refused_total",
                         "Public survey answers refused by the abuse bounds (429)")
SATISFACTION_FLAGGED = Counter("chuangwei_satisfaction_flagged_total",
                               "Areas whose satisfaction rate fell below the threshold when a wave closed")
