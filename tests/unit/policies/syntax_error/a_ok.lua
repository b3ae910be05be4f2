function decide(action)
  return nil
end
