local limit = 10
error("top-level failure")
function decide(action)
  return nil
end
