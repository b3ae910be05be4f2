-- Allows everything unless the action asks it to abstain.
function decide(action)
  if action.input and action.input.abstain then
    return nil
  end
  return { verdict = "allow", rule = "ten_allow", reason = "allowed by ten" }
end
