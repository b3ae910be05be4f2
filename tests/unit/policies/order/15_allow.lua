-- Also allows: only the first allow (in file order) is reported.
function decide(action)
  return { verdict = "allow", rule = "fifteen_allow", reason = "allowed by fifteen" }
end
