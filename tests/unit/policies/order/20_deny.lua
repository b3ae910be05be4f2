function decide(action)
  if action.input and action.input.deny then
    return { verdict = "deny", rule = "twenty_deny", reason = "denied by twenty" }
  end
end
