-- Integration tests only: rules for the fixture connectors (t_*).
-- submitter "mallory"        -> deny (rule test_submitter)
-- input.deny_me = true        -> deny (rule test_deny)
-- write_op with input.n < 0   -> abstain, so the default (writes need approval) applies
-- write_op with input.n == 7  -> approve by role finance
-- fail                        -> approve by role finance, four eyes, expires in 2 s
-- anything else on t_*        -> allow (rule test_allow)
function decide(action)
  if string.sub(action.connector, 1, 2) ~= "t_" then
    return nil
  end
  if action.submitter == "mallory" then
    return { verdict = "deny", reason = "mallory may not use fixtures", rule = "test_submitter" }
  end
  if action.input.deny_me == true then
    return { verdict = "deny", reason = "the test asked for a deny", rule = "test_deny" }
  end
  if action.action == "write_op" and (action.input.n or 0) < 0 then
    return nil
  end
  if action.action == "write_op" and action.input.n == 7 then
    return { verdict = "approve", roles = { "finance" }, summary = "write 7 needs finance",
             reason = "seven is a lot", rule = "test_approve" }
  end
  if action.action == "fail" then
    return { verdict = "approve", roles = { "finance" }, four_eyes = true, expires_in = 2,
             summary = "a failure needs finance", rule = "test_four_eyes" }
  end
  return { verdict = "allow", reason = "fixture connector", rule = "test_allow" }
end
