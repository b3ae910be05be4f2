-- default.lua - the rules shipped with aiorun for its own plugins.
--
-- decide(action, ctx) runs for every proposed action. Return nil to have no opinion, or
-- { verdict = "allow" | "deny" | "approve" | "suggest", rule = "...", reason = "..." } (an
-- approve may also name roles, expires_in, summary and four_eyes). The most restrictive
-- verdict of all policy files wins: deny > suggest > approve > allow. See README.md in this
-- directory.

-- Messages longer than this are not echoed.
local ECHO_MAX_LENGTH = 4096

-- The sandbox's type(), kept in a local: a global is looked up through the call's environment
-- on every use, a local is not (the usual Lua idiom; the same function either way).
local type = type

function decide(action, ctx)
  -- Rule low_confidence: an AI proposer that is itself unsure does not get to act.
  local proposer = action.proposer
  if type(proposer) == "table" and type(proposer.confidence) == "number"
      and proposer.confidence < 0.2 then
    return {
      verdict = "deny",
      rule = "low_confidence",
      reason = string.format("the proposer's confidence %.2f is below 0.2", proposer.confidence),
    }
  end

  if action.connector == "echo" and action.action == "echo" then
    local input = action.input
    local message = type(input) == "table" and input.message or nil
    if type(message) ~= "string" then
      message = ""
    end

    -- Rule echo_forbidden_word: never echo a message containing "forbidden" (any case).
    if message:lower():find("forbidden", 1, true) then
      return {
        verdict = "deny",
        rule = "echo_forbidden_word",
        reason = 'the message contains the word "forbidden"',
      }
    end

    -- Rule echo_too_long: keep echoed messages short.
    if #message > ECHO_MAX_LENGTH then
      return {
        verdict = "deny",
        rule = "echo_too_long",
        reason = string.format("the message is %d bytes; at most %d may be echoed",
                               #message, ECHO_MAX_LENGTH),
      }
    end

    -- Rule echo_allowed: anything else may be echoed.
    return { verdict = "allow", rule = "echo_allowed", reason = "echo is harmless" }
  end

  -- Everything else: no opinion (reads are then allowed, and writes and irreversible actions
  -- need a person's approval, by default).
  return nil
end
