from prometheus_client import Counter, Gauge, Histogram

SCORES_PUBLISHED = Counter("chuangwei_scores_published_total", "score_published events staged in the outbox",
                           ["period_kind"])
RANKINGS_PUBLISHED = Counter("chuangwei_rankings_published_total",
                             "ranking_published events staged in the outbox (one per changed peer group and period)",
                             ["period_kind"])
EVENTS_PER_BATCH = Histogram("chuangwei_scoring_batch_events", "Events applied together in one scoring transaction",
                             ["event_type"], buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500))
RECOMPUTE_SECONDS = Histogram("chuangwei_score_recompute_seconds",
                              "Time to recompute, re-rank and publish after one change or one batch",
                              ["trigger"], buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))
SUBJECTS_RANKED = Gauge("chuangwei_subjects_ranked", "Subjects ranked in the last re-ranked peer group",
                        ["tier", "subject_type", "period_kind"])

CHILD_LAST_HEARD = Gauge("chuangwei_child_last_heard_timestamp_seconds",
                         "When this tier last heard from each child stack (unix time); alert on time() - this",
                         ["child"])
RANKING_FIGURES = Counter("chuangwei_ranking_figures_total",
                          "Figures in GET /rankings answers, by where they came from: serialised earlier and "
                          "unchanged since (cache), or read and serialised for this answer (database)", ["source"])
RANKING_ANSWERS = Counter("chuangwei_ranking_answers_total",
                          "GET /rankings answers: the same text as an earlier answer made from the same rows "
                          "(cache), or assembled from figures (built)", ["source"])
