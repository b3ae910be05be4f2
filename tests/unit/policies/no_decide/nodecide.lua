-- Defines a helper but no decide function.
function decider(action)
  return nil
end
