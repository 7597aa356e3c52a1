// The official Retell TypeScript SDK, unchanged, against a chatplane server:
// create an LLM and a chat agent, a chat, a completion, get, list, end.
// Prints one JSON object of what it saw; tests/retell/test_js_sdk.py checks it.
import Retell from 'retell-sdk';

const client = new Retell({ apiKey: process.env.CHATPLANE_KEY, baseURL: process.env.CHATPLANE_URL, maxRetries: 0 });
const seen = {};

const llm = await client.llm.create({ model: process.env.CHATPLANE_MODEL, begin_message: 'Hi from {{who}}!' });
seen.llm = llm;
const agent = await client.chatAgent.create({
  response_engine: { type: 'retell-llm', llm_id: llm.llm_id },
  agent_name: 'JS agent',
});
seen.agent = agent;
const chat = await client.chat.create({ agent_id: agent.agent_id, retell_llm_dynamic_variables: { who: 'node' } });
seen.created = chat;
seen.completion = await client.chat.createChatCompletion({ chat_id: chat.chat_id, content: 'hello from node' });
seen.retrieved = await client.chat.retrieve(chat.chat_id);
seen.listed = await client.chat.list({ limit: 10 });
seen.ended = await client.chat.end(chat.chat_id);
seen.afterEnd = await client.chat.retrieve(chat.chat_id);
try {
  await client.chat.retrieve('chat_01jzzzzzzzzzzzzzzzzzzzzzzz');
  seen.missing = 'no error';
} catch (error) {
  seen.missing = { name: error.constructor.name, status: error.status };
}
console.log(JSON.stringify(seen));
