"""Evaluating plans: the one evaluation path, the budget search over candidates, and the sweep."""

from edgeprune.search.budget import SearchResult, choose_plan, search
from edgeprune.search.candidates import Candidate, CandidateEvaluator, Outcome
from edgeprune.search.evaluate import Context, Evaluation, evaluate

__all__ = ["Candidate", "CandidateEvaluator", "Context", "Evaluation", "Outcome", "SearchResult", "choose_plan",
           "evaluate", "search"]
