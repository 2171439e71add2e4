"""Use cases of the scoring service: apply inspections, ledger figures, vetoes, appraisals
and policies; keep period scores, rankings and the roll-up current; publish changes.

Each function takes a SQLAlchemy session and a `Context` (home node, division tree,
outbox); the caller owns the transaction. No nameko imports.

How a change flows (`Scorer`):
1. the subject's score is recomputed for each affected period;
2. if it changed and the subject is a child unit, its parent's roll-up input is updated
   and the parent recomputed, up to the stack's home node (only the changed chain);
3. the peer group of every recomputed row is re-ranked (and the next period's group, whose
   movement depends on these ranks);
4. every row whose published figure (score, grade, rank, movement, vetoes, inputs, policy)
   differs from the last one published gets a new revision and a score_published event.

Split by capability: `context`, `policies`, `scorer`, `children`, `events`, `entries`, `reads`, `embargo`. Everything is re-exported here.
"""
from services.scoring.operations.context import *  # noqa: F401,F403
from services.scoring.operations.policies import *  # noqa: F401,F403
from services.scoring.operations.scorer import *  # noqa: F401,F403
from services.scoring.operations.children import *  # noqa: F401,F403
from services.scoring.operations.events import *  # noqa: F401,F403
from services.scoring.operations.entries import *  # noqa: F401,F403
from services.scoring.operations.reads import *  # noqa: F401,F403
from services.scoring.operations.embargo import *  # noqa: F401,F403
from services.scoring.operations.context import _now, _check_node  # noqa: F401
