-- A deny without reason or rule: the runtime fills both in.
function decide(action)
  if action.input and (action.input.deny or action.input.deny30) then
    return { verdict = "deny" }
  end
end
