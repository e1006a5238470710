package mandate.workflows.claims_test

import rego.v1

import data.mandate.workflows.claims

claim(amount, level) := {
	"proposal": {
		"workflow": "claims",
		"action_type": "claim.approve",
		"case_type": "claim.approve",
		"resource": "claim/C-1",
		"params": {"amount": amount},
		"context": {},
		"confidence": 0.97,
	},
	"autonomy": {"level": level},
}

codes(set) := {r.code | some r in set}

test_small_claim_runs_alone if {
	count(claims.deny) == 0 with input as claim("800", 3)
	count(claims.hold) == 0 with input as claim("800", 3)
}

test_large_claim_is_held_at_level_3 if {
	codes(claims.hold) == {"high_value"} with input as claim("12000", 3)
}

test_large_claim_runs_alone_at_level_4_unless_it_needs_judgment if {
	count(claims.hold) == 0 with input as claim("12000", 4)
	codes(claims.hold) == {"needs_judgment"} with input as claim("30000", 4)
}

test_claim_over_hard_limit_is_denied if {
	codes(claims.deny) == {"over_hard_limit"} with input as claim("60000", 3)
	count(claims.hold) == 0 with input as claim("60000", 3)
}

test_claim_under_minimum_is_denied if {
	codes(claims.deny) == {"under_minimum"} with input as claim("0.99", 3)
	count(claims.deny) == 0 with input as claim("1.00", 3)
}

test_litigation_is_held if {
	c := json.patch(claim("800", 4), [{"op": "add", "path": "/proposal/context/litigation", "value": true}])
	codes(claims.hold) == {"litigation_risk"} with input as c
}

novel(amount, level, history) := json.patch(claim(amount, level), [{"op": "add", "path": "/history", "value": history}])

usual := {"first_resource": true, "amounts": {"count": 20, "p95": "800.00", "max": "950.00"}}

test_a_novel_claim_above_the_usual_is_held_below_level_4 if {
	codes(claims.hold) == {"novel_pattern"} with input as novel("900", 3, usual)
	count(claims.hold) == 0 with input as novel("900", 4, usual)
	count(claims.hold) == 0 with input as novel("800", 3, usual)
	count(claims.hold) == 0 with input as novel("900", 3, json.patch(usual, [{"op": "replace", "path": "/first_resource", "value": false}]))
	count(claims.hold) == 0 with input as novel("900", 3, json.patch(usual, [{"op": "replace", "path": "/amounts/count", "value": 19}]))
}
