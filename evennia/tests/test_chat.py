"""`post_chat` against a real local HTTP server: answers, bridge errors, a dead port."""

import socket
import unittest

from fakebridge import EventStream, FakeBridgeTest
from worldbridge_evennia import chat


class PostChatTest(FakeBridgeTest):
    def test_the_answer_and_what_was_sent(self):
        self.server.answers.append((200, {"response": "Hello, Ann.", "user": "Ann",
                                          "room": "Limbo", "session_messages": 2,
                                          "crisis": False}))
        payload = {"user_id": "g#1", "username": "Ann", "message": "Hello", "room": "Limbo"}
        answer = chat.post_chat(self.url, payload, token="tok", timeout=5)
        self.assertEqual(answer["response"], "Hello, Ann.")
        path, headers, body = self.server.seen[0]
        self.assertEqual(path, "/bridge/chat")
        self.assertEqual(body, payload)
        self.assertEqual(headers["Authorization"], "Bearer tok")

    def test_bridge_errors_become_one_sentence(self):
        self.server.answers.append((503, {"error": "the agent queue is full",
                                          "code": "agent_busy"}))
        with self.assertRaises(chat.ChatError) as e:
            chat.post_chat(self.url, {}, timeout=5)
        self.assertEqual(str(e.exception), "the agent queue is full (HTTP 503)")
        self.server.answers.append((404, b"<html>nope</html>"))
        with self.assertRaises(chat.ChatError) as e:
            chat.post_chat(self.url, {}, timeout=5)
        self.assertEqual(str(e.exception), "the bridge refused the request (HTTP 404)")

    def test_an_answer_of_the_wrong_shape(self):
        self.server.answers.append((200, b"not json"))
        with self.assertRaisesRegex(chat.ChatError, "not JSON"):
            chat.post_chat(self.url, {}, timeout=5)
        self.server.answers.append((200, {"results": []}))
        with self.assertRaisesRegex(chat.ChatError, "without a `response`"):
            chat.post_chat(self.url, {}, timeout=5)

    def test_nothing_listening(self):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        s.close()
        with self.assertRaisesRegex(chat.ChatError, "is not reachable"):
            chat.post_chat(f"http://127.0.0.1:{port}", {}, timeout=5)

    def test_a_bridge_that_never_answers(self):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        try:
            with self.assertRaisesRegex(chat.ChatError, "did not answer within 0.3 s"):
                chat.post_chat(f"http://127.0.0.1:{s.getsockname()[1]}", {}, timeout=0.3)
        finally:
            s.close()


if __name__ == "__main__":
    unittest.main()


class StreamedChatTest(FakeBridgeTest):
    def test_parts_go_to_on_part_in_order_and_done_is_the_answer(self):
        done = {"response": "One. Two.", "user": "Ann", "room": "Limbo",
                "session_messages": 2, "crisis": False}
        self.server.answers.append((200, EventStream(
            [("thinking", {}), ("part", {"index": 0, "text": "One.", "crisis": False}),
             ("part", {"index": 1, "text": " Two.", "crisis": False}), ("done", done)],
            comments=["ping"])))
        parts = []
        answer = chat.post_chat(self.url, {"user_id": "g#1", "message": "hi"}, timeout=5,
                                on_part=parts.append)
        self.assertEqual(parts, ["One.", " Two."])
        self.assertEqual(answer, done)
        _, headers, body = self.server.seen[0]
        self.assertEqual(body, {"user_id": "g#1", "message": "hi", "stream": True})
        self.assertIn("text/event-stream", headers["Accept"])

    def test_a_bridge_that_does_not_stream_answers_as_before(self):
        self.server.answers.append((200, {"response": "Whole.", "user": "Ann"}))
        parts = []
        answer = chat.post_chat(self.url, {}, timeout=5, on_part=parts.append)
        self.assertEqual((answer["response"], parts), ("Whole.", []))

    def test_an_error_event_after_parts_is_a_chat_error(self):
        self.server.answers.append((200, EventStream(
            [("part", {"index": 0, "text": "Hm.", "crisis": False}),
             ("error", {"error": "the agent did not answer within 30 s",
                        "code": "agent_timeout"})])))
        parts = []
        with self.assertRaisesRegex(chat.ChatError, "did not answer within 30 s"):
            chat.post_chat(self.url, {}, timeout=5, on_part=parts.append)
        self.assertEqual(parts, ["Hm."])
        self.server.answers.append((200, EventStream([("part", {"text": "cut"})])))
        with self.assertRaisesRegex(chat.ChatError, "without an answer"):
            chat.post_chat(self.url, {}, timeout=5, on_part=lambda t: None)
