"""`post_chat` against a real local HTTP server: answers, bridge errors, a dead port."""

import socket
import unittest

from fakebridge import FakeBridgeTest
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
